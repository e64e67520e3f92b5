import functools, time, importlib.util
import jax, jax.numpy as jnp, numpy as np
from diffusion_jax import data, batches
from diffusion_jax.methods import denoiser
spec=importlib.util.spec_from_file_location("c","configs/denoiser_mnist.py"); m=importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
c=m.get_config(); c.data.data_dir="/work/tfds"; c.denoiser.hidden=32; c.train.batch_size=64; c.train.lr=1e-3
c.denoiser.eval_images=200; c.sample.batch_size=100
M=denoiser.METHODS["denoiser"]; M.validate(c)
split=data.load_split("mnist","train",data_dir="/work/tfds",progress=False)
td=batches.TrainData(images=jnp.asarray(split.images), labels=jnp.asarray(split.labels))
static, state = M.init_state(c)
step=jax.jit(functools.partial(M.train_step, config=c, static=static, batch_sharding=None), donate_argnums=0)
t=time.time()
for i in range(200):
    state, met = step(state, td)
    if i % 50 == 0 or i == 199: print(i, float(met["loss"]), time.time()-t, flush=True)
print(denoiser.report(c, "/tmp/c_den", state.ema_params, int(state.step)))
