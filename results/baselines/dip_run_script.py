import functools, time, sys, jax, jax.numpy as jnp, numpy as np
from diffusion_jax import batches, data, writers
from diffusion_jax.config import from_sibling
from diffusion_jax.methods import dip
name, steps = sys.argv[1], int(sys.argv[2])
c = from_sibling("configs/x.py", name)
c.data.data_dir = "/work/tfds"
dip.validate(c)
split = data.load_split(c.data.dataset, "train", data_dir=c.data.data_dir, image_size=c.data.image_size, channels=c.data.channels, progress=False)
td = batches.TrainData(images=jnp.asarray(split.images), labels=jnp.asarray(split.labels))
g=[None]
def init():
    g[0], s = dip.init_state(c); return s
t=time.time()
st = jax.jit(init)()
step = jax.jit(functools.partial(dip.train_step, config=c, static=g[0]))
st, m = step(st, td); jax.block_until_ready(st); print("compile+1", time.time()-t, flush=True)
wd = f"/tmp/d/run_{name}"
import os, shutil; shutil.rmtree(wd, ignore_errors=True); os.makedirs(wd)
w = writers.JsonlWriter(os.path.join(wd, "metrics.jsonl"))
acc=[]
t=time.time()
for i in range(1, steps):
    st, m = step(st, td)
    acc.append(m)
    if (i+1) % 25 == 0:
        h = jax.device_get(acc); acc=[]
        rec = {k: float(np.mean([x[k] for x in h])) for k in h[0]}
        w.write_scalars(i+1, rec)
        if (i+1) % 100 == 0: print(i+1, f"{time.time()-t:.1f}s", {k: round(v,3) for k,v in rec.items()}, flush=True)
w.close()
print(dip.report(c, wd, st.ema_params, int(st.step)))
