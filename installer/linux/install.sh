#!/usr/bin/env bash
# Install the built application for the current user (no root needed):
#     ./install.sh [PREFIX]        (default PREFIX: ~/.local)
# It copies this folder to PREFIX/lib/transferstudio, links PREFIX/bin/transferstudio, and adds
# the menu entry and icon (freedesktop: share/applications, share/icons/hicolor).
# ./install.sh --uninstall [PREFIX] removes them again; workspaces and settings are kept.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
if [[ "${1:-}" == "--uninstall" ]]; then UNINSTALL=1; shift; else UNINSTALL=0; fi
PREFIX="${1:-$HOME/.local}"
mkdir -p "$PREFIX" && PREFIX="$(cd "$PREFIX" && pwd)"   # absolute: the links must not be relative
APP="$PREFIX/lib/transferstudio"
DESKTOP="$PREFIX/share/applications/transferstudio.desktop"
ICONS="$PREFIX/share/icons/hicolor"

if [[ $UNINSTALL == 1 ]]; then
    rm -rf "$APP" "$PREFIX/bin/transferstudio" "$DESKTOP"
    find "$ICONS" -name 'transferstudio.*' -delete 2>/dev/null || true
    echo "removed TransferStudio from $PREFIX"
    exit 0
fi

if [[ "$HERE" != "$APP" ]]; then
    # Copy into a new folder, then swap it in: an interrupted install leaves the old one whole.
    mkdir -p "$(dirname "$APP")"
    rm -rf "$APP.new"
    cp -a "$HERE" "$APP.new"
    rm -rf "$APP"
    mv "$APP.new" "$APP"
fi
mkdir -p "$PREFIX/bin" "$(dirname "$DESKTOP")" "$ICONS/scalable/apps"
ln -sfn "$APP/transferstudio" "$PREFIX/bin/transferstudio"
# Exec quotes the path (it may contain spaces); TryExec takes it unquoted.
sed -e "s|^Exec=transferstudio|Exec=\"$APP/transferstudio\"|" \
    -e "s|^TryExec=transferstudio|TryExec=$APP/transferstudio|" \
    "$APP/share/transferstudio.desktop" > "$DESKTOP"
cp "$APP/share/transferstudio.svg" "$ICONS/scalable/apps/transferstudio.svg"
for png in "$APP"/share/icons/transferstudio-*.png; do
    size="$(basename "$png" .png)"; size="${size#transferstudio-}"
    mkdir -p "$ICONS/${size}x${size}/apps"
    cp "$png" "$ICONS/${size}x${size}/apps/transferstudio.png"
done
command -v update-desktop-database > /dev/null && update-desktop-database -q "$(dirname "$DESKTOP")" || true
echo "installed: $APP"
echo "run it from the applications menu, or: $PREFIX/bin/transferstudio"
