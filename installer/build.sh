#!/usr/bin/env bash
# Build the self-contained TransferStudio application (PyInstaller onedir) on Linux or macOS.
#
#     installer/build.sh [--python PYTHON] [--archive]
#
# Without --python a fresh build environment is created in build/installer/venv with
# TransferStudio (not editable) and PyInstaller; --python uses an environment that already has
# both (faster when iterating). TORCH_INDEX_URL picks where torch comes from (default: the
# package index's default build; see docs/installing.md, "Which torch build"). Output:
#     build/installer/dist/transferstudio/         the application folder (Linux)
#     build/installer/dist/TransferStudio.app      (macOS)
#     build/installer/transferstudio-VERSION-OS-ARCH.tar.gz   with --archive
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${TRANSFERSTUDIO_BUILD_DIR:-$ROOT/build/installer}"
PYTHON=""
ARCHIVE=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) PYTHON="$2"; shift 2 ;;
        --archive) ARCHIVE=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
say() { echo "[build] $*"; }
mkdir -p "$BUILD"

if [[ -z "$PYTHON" ]]; then
    PYTHON="$BUILD/venv/bin/python"
    if [[ ! -x "$PYTHON" ]]; then
        say "creating the build environment $BUILD/venv"
        python3 -m venv "$BUILD/venv"
    fi
    say "installing TransferStudio and PyInstaller into it"
    "$PYTHON" -m pip install --quiet --upgrade pip
    if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
        "$PYTHON" -m pip install --quiet --index-url "$TORCH_INDEX_URL" torch torchvision
    fi
    "$PYTHON" -m pip install --quiet "$ROOT" "pyinstaller>=6.11"
fi
"$PYTHON" -c "import PyInstaller, transferstudio" 2>/dev/null || {
    echo "$PYTHON lacks PyInstaller or TransferStudio: pip install '$ROOT' pyinstaller" >&2; exit 1; }

say "rendering icons"
"$PYTHON" "$ROOT/installer/make_icons.py" "$BUILD/icons" > /dev/null
say "running PyInstaller (several minutes: torch is large)"
start=$(date +%s)
TRANSFERSTUDIO_ICON_DIR="$BUILD/icons" "$PYTHON" -m PyInstaller --noconfirm --log-level WARN \
    --distpath "$BUILD/dist" --workpath "$BUILD/work" "$ROOT/installer/transferstudio.spec"

if [[ "$(uname)" == "Linux" ]]; then
    APP="$BUILD/dist/transferstudio"
    mkdir -p "$APP/share/icons"
    cp "$ROOT/resources/transferstudio.desktop" "$ROOT/resources/transferstudio.svg" "$APP/share/"
    cp "$BUILD"/icons/transferstudio-*.png "$APP/share/icons/"
    cp "$ROOT/installer/linux/install.sh" "$APP/install.sh"
else
    APP="$BUILD/dist/TransferStudio.app"
fi
say "built $APP in $(( $(date +%s) - start )) s: $(du -sh "$APP" | cut -f1)"

if [[ $ARCHIVE == 1 ]]; then
    version="$("$PYTHON" -c 'import transferstudio; print(transferstudio.__version__)')"
    name="transferstudio-$version-$(uname -s | tr A-Z a-z)-$(uname -m).tar.gz"
    say "packing $name"
    tar -C "$(dirname "$APP")" -czf "$BUILD/$name" "$(basename "$APP")"
    say "archive: $BUILD/$name ($(du -sh "$BUILD/$name" | cut -f1))"
fi
