# Source me on the GPU machine, in the repository root, after stage.sh installed /tmp/site: the
# package layout an install gives (pyproject's package-dir: multishot.pipeline is pipeline/, ...)
# as a folder of links, and the carried packages, on PYTHONPATH. Run Python from elsewhere than
# the repository root (cd /tmp): there its own multishot/ folder would shadow the links.
R=$PWD
T=${BUNDLE_DIR:-/tmp}
mkdir -p $T/shim/multishot
for f in "$R"/multishot/*; do ln -sfn "$f" $T/shim/multishot/; done
for p in pipeline annotate dataset model trainer; do ln -sfn "$R/$p" $T/shim/multishot/$p; done
export PYTHONPATH=$T/shim:$T/site
