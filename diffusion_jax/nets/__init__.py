"""The networks: the Flax NNX modules that the methods train, and the pure helpers that build,
initialise or check them. `unet` is Ho et al.'s DDPM U-Net (`UNet`, `count_params`),
`course_unet` the CS180/280A course's MNIST U-Net (DDPM's `config.model.arch = "course"`, and the
denoiser), `gan` the MLP GAN's and DCGAN's generators and discriminators, `vae` the VAE's encoder
and decoder, `vae_gan` the VAE-GAN's discriminator and `skipnet` Deep Image Prior's skip
encoder-decoder. A network here takes its sizes as arguments and maps arrays to arrays; configs,
losses, optimizers, training steps, data, checkpoints and any I/O belong to the callers
(`state.build_model`, `diffusion_jax.methods`), and nothing here imports them, nor
ml_collections (an import-linter contract of pyproject.toml). Methods import nets, never the
reverse.
"""
