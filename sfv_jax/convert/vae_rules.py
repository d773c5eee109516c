"""Rules between diffusers' AutoencoderKLTemporalDecoder keys and sfv-jax's.

Module names already match diffusers' (encoder.down_blocks.0.resnets.1.conv1, decoder.time_conv_out,
...), so the only special case is Attention.to_out, a [Linear, Dropout] list in diffusers. Conv2d
and Conv3d kernels (time_conv_out, the temporal resblocks) share the KERNEL layout rule.
"""

from sfv_jax.convert.rulebook import COMMON_RULES, KERNEL, Rule

VAE_RULES = (
    Rule("{m}.to_out.0.weight", "{m}.to_out.kernel", KERNEL),
    Rule("{m}.to_out.0.bias", "{m}.to_out.bias"),
) + COMMON_RULES
