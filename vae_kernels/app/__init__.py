"""The reference VAE application: ``python -m vae_kernels train|evaluate``.

Not part of the library: ``vae_kernels`` itself (``functional``, ``modules``, ``ops``,
``backends``, ``reference``, ``triton/``) needs torch alone; this package trains and
evaluates an example VAE with it.
"""
