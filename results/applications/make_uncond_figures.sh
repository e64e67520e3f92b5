#!/bin/bash
# Used for results/applications.md: bash results/applications/make_uncond_figures.sh CONFIG SRC_WORKDIR COPY FILES PSNR_IMAGES MASK
# denoise / sdedit / inpaint on an unconditional workdir (copied), and the class kinds refused.
# usage: uncond_figures.sh CONFIG SRC_WORKDIR DEST IN_FILES PSNR_IMAGES
set -e
cd /work/wt-e
export PYTHONPATH=/work/wt-e
CFG=$1; W=$3
rm -rf $W; cp -r $2 $W; rm -rf $W/edit
M="nice -n 10 python -m diffusion_jax.main --config=$CFG --workdir=$W --mode=edit --config.data.data_dir=/work/tfds"
run() { echo "== $*"; /usr/bin/time -f "%e s" $M "$@" 2>&1 | grep -v "^Reading\|^I1202\|^W1202" | tail -3; }
for k in translate anagram hybrid; do
  echo "== refused: $k"; $M --config.edit.kind=$k > $W/refused_$k.log 2>&1 && echo "UNEXPECTED rc=0" || echo "rc=$?"
  tail -2 $W/refused_$k.log; grep -c Traceback $W/refused_$k.log || true; ls $W/edit 2>&1 | head -2
done
run --config.edit.kind=denoise --config.edit.psnr_images=$5
run --config.edit.kind=sdedit --config.edit.images=$4 "--config.edit.strength=(0.3,0.5,0.7,0.9,1.0)"
cp $W/edit/sdedit.png $W/edit/sdedit_files.png; cp $W/edit/sdedit.npz $W/edit/sdedit_files.npz
run --config.edit.kind=sdedit
run --config.edit.kind=inpaint --config.edit.mask=centre
run --config.edit.kind=inpaint --config.edit.mask=$6
echo DONE
