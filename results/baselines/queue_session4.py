"""Serial queue: train each baseline run, time it (wall + CPU of the child), then score per dataset."""
import json, os, resource, subprocess, sys, time
SRC = "/work/runs/src"
ENV = {**os.environ, "PYTHONPATH": SRC}
COMMON = ["--config.data.data_dir=/work/tfds", "--config.train.tensorboard=False",
          "--config.train.sample_every=0", "--config.train.keep_checkpoints=2"]
GROUPS = {
 "cifar10": [
  ("vae_cifar10", "configs/vae_cifar10.py", ["--config.train.num_steps=50", "--config.train.ckpt_every=50"]),
  ("vae_gan_cifar10", "configs/vae_gan_cifar10.py", ["--config.train.num_steps=50", "--config.train.ckpt_every=50"]),
  ("dcgan_cifar10", "configs/dcgan_cifar10.py", ["--config.train.num_steps=50", "--config.train.ckpt_every=50"]),
  ("ddpm_cifar10", "configs/ddpm_cifar10_cpu.py", ["--config.train.num_steps=100", "--config.train.ckpt_every=100", "--config.train.time_budget_s=0"]),
  ("ddpm_cosine_cifar10", "configs/ddpm_cosine_cifar10_cpu.py", ["--config.train.num_steps=100", "--config.train.ckpt_every=100", "--config.train.time_budget_s=0"]),
 ],
 "mnist": [
  ("gan_mnist", "configs/gan_mnist.py", ["--config.train.num_steps=200", "--config.train.ckpt_every=100"]),
  ("dcgan_mnist", "configs/dcgan_mnist.py", ["--config.train.num_steps=200", "--config.train.ckpt_every=100"]),
  ("ddpm_mnist", "configs/ddpm_mnist_cpu.py", ["--config.train.num_steps=400", "--config.train.ckpt_every=100", "--config.train.time_budget_s=0"]),
 ],
}
only = sys.argv[1:] or list(GROUPS)
for ds in only:
    runs_path = f"/work/runs/runs_{ds}.json"
    runs = json.load(open(runs_path)) if os.path.exists(runs_path) else []
    done = {r["name"] for r in runs}
    for name, cfg, extra in GROUPS[ds]:
        if name in done:
            continue
        wd = f"/work/runs/{name}"
        cmd = [sys.executable, "-m", "diffusion_jax.main", f"--config={SRC}/{cfg}", f"--workdir={wd}", *COMMON, *extra]
        print(time.strftime("%H:%M:%S"), "train", name, flush=True)
        load0 = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with open(f"/work/runs/{name}.log", "w") as log:
            rc = subprocess.call(cmd, env=ENV, cwd=SRC, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        print(time.strftime("%H:%M:%S"), name, "rc", rc, f"wall {wall:.0f}s cpu {cpu:.0f}s load {load0:.1f}->{os.getloadavg()[0]:.1f}", flush=True)
        if rc != 0:
            continue
        runs.append({"name": name, "config": f"{SRC}/{cfg}", "workdir": wd,
                     "overrides": {a.split("=")[0].removeprefix("--config."): json.loads(a.split("=")[1]) if a.split("=")[1][0].isdigit() else a.split("=")[1] for a in extra},
                     "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
                     "load_avg_start": round(load0, 2), "load_avg_end": round(os.getloadavg()[0], 2)})
        json.dump(runs, open(runs_path, "w"), indent=1)
    print(time.strftime("%H:%M:%S"), "score", ds, flush=True)
    rc = subprocess.call([sys.executable, f"{SRC}/benchmarks/baselines.py", f"--runs={runs_path}",
                          f"--out=/work/runs/baselines_{ds}.json", "--samples=200", "--ref=500",
                          "--data_dir=/work/tfds", "--figures=/work/runs/figures"], env=ENV, cwd=SRC,
                         stdout=open(f"/work/runs/score_{ds}.log", "w"), stderr=subprocess.STDOUT)
    print(time.strftime("%H:%M:%S"), "scored", ds, "rc", rc, flush=True)
