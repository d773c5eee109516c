"""Rules between diffusers' UNetSpatioTemporalConditionModel keys and sfv-jax's."""

from sfv_jax.convert.rulebook import COMMON_RULES, KERNEL, Rule

FEED_FORWARD_AND_ATTENTION_RULES = (
    # Attention.to_out is a ModuleList [Linear, Dropout] in diffusers; ours is the Linear itself.
    Rule("{m}.to_out.0.weight", "{m}.to_out.kernel", KERNEL),
    Rule("{m}.to_out.0.bias", "{m}.to_out.bias"),
    # FeedForward.net is [GEGLU, Dropout, Linear]; ours names the two parametrised entries.
    Rule("{m}.net.0.proj.weight", "{m}.net_0.proj.kernel", KERNEL),
    Rule("{m}.net.0.proj.bias", "{m}.net_0.proj.bias"),
    Rule("{m}.net.2.weight", "{m}.net_2.kernel", KERNEL),
    Rule("{m}.net.2.bias", "{m}.net_2.bias"),
)

UNET_RULES = FEED_FORWARD_AND_ATTENTION_RULES + COMMON_RULES
