"""The EMO model (arXiv 2402.17485) on diffusers, its trainer, and what a sampler needs.

One concept per file: config.py (EMOConfig, EMO_MODELS), unet.py (backbone), reference_net.py,
audio_features.py (featurizers), audio_attention.py, temporal.py, face_locator.py, speed.py, latents.py
(VAE or tiny pixel codec), emo.py (the composed EMOModel), layer_groups.py (what each training stage
trains), data.py (clips manifest -> batches), checkpoint.py, train.py (TrainOptions; train_start.py: the
model a run starts from; train_loop.py: one step; sync_expert.py: the lip-sync expert's loss), sample.py
(SampleOptions).

For a sampler:
    model, config, meta = checkpoint.load_checkpoint(CKPT)        # EMA weights, eval mode
    codec = latents.load_codec(config.codec, meta["vae_path"])     # .encode / .decode, [-1, 1] images
    featurizer = audio_features.build_featurizer(config)           # (wav16k, n_frames) -> (n, L, D)
    windows = audio_features.audio_windows(featurizer(wav, n), config.audio_context)   # (n, 2m+1, L*D)
    ref = model.encode_reference(ref_latent, motion_latents)       # once per window, reused every step
    eps = model(noisy, t, audio=..., face_mask=..., speed=..., reference=ref,
                reference_keep=..., audio_keep=...)                # (B, F, C, h, w)
    scheduler = DDIMScheduler(**meta["noise_schedule"])
Nothing is imported here, so `import model` stays cheap.
"""
