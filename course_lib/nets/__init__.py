"""The networks of the course, one file each, each small enough to train on a laptop.

* :class:`UNet` (``unet.py``): the epsilon-predictor for 32x32 images (Ho et al., 2020, Appendix B,
  shrunk): a sinusoidal time embedding, residual blocks with GroupNorm, an optional class embedding with
  a null class for classifier-free guidance, optional extra input channels for a condition image
  (super-resolution) and optional cross-attention to text (latent diffusion).
* :class:`MLPDenoiser`, :class:`ConditionalMLPDenoiser` (``mlp.py``): the same idea for 2-D points.
* :class:`Classifier`, :class:`NoisyClassifier` (``classifiers.py``): the evaluation classifier of
  :mod:`course_lib.metrics` and the noise-aware classifier of classifier guidance.
* :class:`Autoencoder` (``autoencoder.py``), :class:`TextEncoder` (``text.py``), attention and
  :class:`SpatialTransformer` (``attention.py``): the parts of latent diffusion (lesson 08).
"""

from .attention import CrossAttention, SpatialTransformer, attention, attention_weights
from .autoencoder import Autoencoder, ConvBlock
from .classifiers import Classifier, NoisyClassifier
from .common import ResBlock, count_parameters, timestep_embedding
from .mlp import ConditionalMLPDenoiser, MLPDenoiser
from .text import TextEncoder
from .unet import UNet

__all__ = ["Autoencoder", "Classifier", "ConditionalMLPDenoiser", "ConvBlock", "CrossAttention", "MLPDenoiser",
           "NoisyClassifier", "ResBlock", "SpatialTransformer", "TextEncoder", "UNet", "attention",
           "attention_weights", "count_parameters", "timestep_embedding"]
