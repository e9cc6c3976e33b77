# Build the self-contained TransferStudio application (PyInstaller onedir) on Windows.
#
#     powershell -ExecutionPolicy Bypass -File installer\build.ps1 [-Python PYTHON] [-Archive]
#
# The Windows recipe of installer/build.sh (see there and docs/installing.md). Without -Python a
# fresh build environment is created in build\installer\venv. $env:TORCH_INDEX_URL picks the
# torch build, e.g. https://download.pytorch.org/whl/cu128 for NVIDIA GPUs (PyPI's Windows
# torch is CPU-only). Output: build\installer\dist\transferstudio\ with transferstudio.exe (console:
# the CLI) and TransferStudio.exe (the window, no console); -Archive adds a .zip.
# Not run here: the recipe is checked on Linux only (docs/installing.md says so).
param([string]$Python = "", [switch]$Archive)
$ErrorActionPreference = "Stop"
$Root = Split-Path -Parent $PSScriptRoot
$Build = if ($env:TRANSFERSTUDIO_BUILD_DIR) { $env:TRANSFERSTUDIO_BUILD_DIR } else { Join-Path $Root "build\installer" }
New-Item -ItemType Directory -Force -Path $Build | Out-Null

if (-not $Python) {
    $Python = Join-Path $Build "venv\Scripts\python.exe"
    if (-not (Test-Path $Python)) {
        Write-Host "[build] creating the build environment $Build\venv"
        py -3.11 -m venv (Join-Path $Build "venv")
    }
    & $Python -m pip install --quiet --upgrade pip
    if ($env:TORCH_INDEX_URL) {
        & $Python -m pip install --quiet --index-url $env:TORCH_INDEX_URL torch torchvision
    }
    & $Python -m pip install --quiet $Root "pyinstaller>=6.11"
}

Write-Host "[build] rendering icons"
& $Python (Join-Path $Root "installer\make_icons.py") (Join-Path $Build "icons") | Out-Null
Write-Host "[build] running PyInstaller (several minutes: torch is large)"
$env:TRANSFERSTUDIO_ICON_DIR = Join-Path $Build "icons"
& $Python -m PyInstaller --noconfirm --log-level WARN --distpath (Join-Path $Build "dist") `
    --workpath (Join-Path $Build "work") (Join-Path $Root "installer\transferstudio.spec")
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed" }
$App = Join-Path $Build "dist\transferstudio"
Write-Host "[build] built $App"
if ($Archive) {
    $Version = & $Python -c "import transferstudio; print(transferstudio.__version__)"
    $Zip = Join-Path $Build "transferstudio-$Version-windows-x86_64.zip"
    Compress-Archive -Force -Path $App -DestinationPath $Zip
    Write-Host "[build] archive: $Zip"
}
