"""A BERT classifier whose layers have their own head counts and FFN widths: what `slm prune` writes.

transformers 5 dropped head pruning, and `BertSelfAttention` derives its head size as hidden_size /
num_attention_heads, so a BERT with 7 heads in one layer and 12 in the next has no stock class. This one builds
the stock BERT, then swaps each layer's projections for Linear modules of the pruned shapes:

    attention.self.query/key/value   hidden -> heads * attention_head_size
    attention.output.dense           heads * attention_head_size -> hidden
    intermediate.dense               hidden -> neurons
    output.dense                     neurons -> hidden

The file is self-contained (torch and transformers only): `save_pretrained` copies it beside the weights and
writes `auto_map` into config.json, so plain transformers loads an output with `trust_remote_code=True`.
Importing it as `slmkit.pruned_bert` registers the classes with the Auto* factories instead.
"""

from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

MODEL_TYPE = "slm_pruned_bert"


class PrunedBertConfig(BertConfig):
    """A `BertConfig` plus the real per-layer shapes.

    `num_attention_heads` and `intermediate_size` keep the unpruned model's values: the stock modules are built
    from them (and BertSelfAttention checks hidden_size % num_attention_heads) before being replaced; the
    shapes that exist are `layer_heads[i]` heads of `attention_head_size` and `layer_intermediate[i]` neurons.
    """

    model_type = MODEL_TYPE
    layer_heads: list[int] | None = None  # attention heads kept in each layer
    layer_intermediate: list[int] | None = None  # FFN neurons kept in each layer
    attention_head_size: int | None = None  # width of one head (unchanged by pruning)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.attention_head_size is None:
            self.attention_head_size = self.hidden_size // self.num_attention_heads
        if self.layer_heads is None:
            self.layer_heads = [self.num_attention_heads] * self.num_hidden_layers
        if self.layer_intermediate is None:
            self.layer_intermediate = [self.intermediate_size] * self.num_hidden_layers
        if len(self.layer_heads) != self.num_hidden_layers or len(self.layer_intermediate) != self.num_hidden_layers:
            raise ValueError(f"layer_heads and layer_intermediate need one entry per layer ({self.num_hidden_layers})")
        if min(self.layer_heads) < 1 or min(self.layer_intermediate) < 1:
            raise ValueError("every layer needs at least one attention head and one FFN neuron")


class PrunedBertForSequenceClassification(BertForSequenceClassification):
    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig):
        super().__init__(config)
        hidden, head_size = config.hidden_size, config.attention_head_size
        for layer, heads, neurons in zip(self.bert.encoder.layer, config.layer_heads, config.layer_intermediate):
            attention = layer.attention.self
            width = heads * head_size
            # BertSelfAttention.forward reshapes to (batch, seq, -1, attention_head_size): fewer heads just work.
            # Its `scaling` (head_size ** -0.5) is unchanged because the head size is.
            attention.num_attention_heads = heads
            attention.attention_head_size = head_size
            attention.all_head_size = width
            attention.query = nn.Linear(hidden, width)
            attention.key = nn.Linear(hidden, width)
            attention.value = nn.Linear(hidden, width)
            layer.attention.output.dense = nn.Linear(width, hidden)
            layer.intermediate.dense = nn.Linear(hidden, neurons)
            layer.output.dense = nn.Linear(neurons, hidden)
        self.post_init()  # initialize the new modules as BERT does (from_pretrained then loads the weights)


def register() -> None:
    """Make AutoConfig / AutoModelForSequenceClassification know `slm_pruned_bert`, and make save_pretrained
    copy this file and write `auto_map` so that the output also loads with `trust_remote_code=True`."""
    AutoConfig.register(MODEL_TYPE, PrunedBertConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(PrunedBertConfig, PrunedBertForSequenceClassification, exist_ok=True)
    PrunedBertConfig.register_for_auto_class("AutoConfig")
    PrunedBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")


if __name__ == "slmkit.pruned_bert":  # as remote code, transformers resolves the classes through auto_map
    register()
