# Shared by scripts/demo.sh and scripts/test.sh (sourced, not run): install a requirements file
# only if something it lists is missing or has a version outside its pin, so that a fresh
# environment sets itself up and a ready one is left exactly as it is (no network access).
#   ensure_requirements FILE      (Python: $PY, else $PYTHON, else python)
ensure_requirements() {
  local py=${PY:-${PYTHON:-python}} missing
  missing=$("$py" - "$1" <<'PYEOF'
import re
import sys
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip vendors packaging
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name


def requirements(path):
    """Requirement lines of a pip requirements file, following -r includes."""
    for line in Path(path).read_text().splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith("-r"):
            yield from requirements(Path(path).parent / line[2:].strip())
        elif line and not line.startswith(("#", "-")):
            yield Requirement(line)


installed = {canonicalize_name(d.metadata["Name"] or ""): d.version
             for d in metadata.distributions()}
for req in requirements(sys.argv[1]):
    version = installed.get(canonicalize_name(req.name))
    if version is None or not req.specifier.contains(version, prereleases=True):
        print(req)
PYEOF
  )
  if [ -n "$missing" ]; then
    echo "installing $1 (missing or outside the pins: $(echo $missing))" >&2
    "$py" -m pip install -r "$1"
  fi
}
