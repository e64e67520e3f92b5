#!/bin/bash
# Used for results/applications.md (Fashion-MNIST); W is a copy of the queue workdir.
# Every edit kind on the class-conditional Fashion-MNIST CPU workdir (a copy of /work/runs/fashion_mnist_cond_cpu).
set -e
cd /work/wt-e
export PYTHONPATH=/work/wt-e
W=/tmp/e_runs/fashion
M="nice -n 10 python -m diffusion_jax.main --config=configs/fashion_mnist_cond_cpu.py --workdir=$W --mode=edit --config.data.data_dir=/work/tfds"
IN=results/applications/fashion_mnist/inputs
run() { echo "== $*"; /usr/bin/time -f "%e s" $M "$@" 2>&1 | grep -v "^Reading\|^I1202\|^W1202" | tail -3; }
save() { for f in "$@"; do cp $W/edit/$f $W/edit/keep_$f; done; }
run --config.edit.kind=denoise --config.edit.psnr_images=500
run --config.edit.kind=sdedit --config.edit.images=$IN/drawn_trouser.jpg,$IN/drawn_tshirt.png "--config.edit.strength=(0.3,0.5,0.7,0.9,1.0)"
cp $W/edit/sdedit.png $W/edit/sdedit_files.png; cp $W/edit/sdedit.npz $W/edit/sdedit_files.npz
run --config.edit.kind=sdedit
run --config.edit.kind=inpaint --config.edit.mask=centre
run --config.edit.kind=inpaint --config.edit.mask=half
run --config.edit.kind=translate
run --config.edit.kind=anagram
cp $W/edit/anagram.png $W/edit/anagram_1-3_5-7.png
run --config.edit.kind=anagram "--config.edit.pairs=8,8;9,7;0,8"
cp $W/edit/anagram.png $W/edit/anagram_alt.png
run --config.edit.kind=hybrid
cp $W/edit/hybrid.png $W/edit/hybrid_1-3_5-7.png
run --config.edit.kind=hybrid "--config.edit.pairs=8,1;3,9;0,7"
cp $W/edit/hybrid.png $W/edit/hybrid_alt.png
echo DONE
