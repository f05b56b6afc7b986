"""The non-transformer students of `slm distill`: a BiLSTM (Tang et al. 2019) and a CNN (Kim 2014) classifier.

Both read word-piece ids with the teacher's tokenizer, embed them (the embedding starts as a PCA projection of
the teacher's; see slmkit.students), pool the sequence into one vector with a masked max over time, and classify
it. Both are exact under right padding (as slmkit's collate and runtime pad): a text alone and the same
text padded in a batch give the same logits.

    BiLSTM  ids (b, s) -> embed (b, s, e) -> [forward LSTM ; backward LSTM] (b, s, 2h) -> max over time (b, 2h)
            -> ReLU dense (b, d) -> classifier (b, labels)
            (NER, BiLSTMForTokenClassification: no pooling; each token's states -> ReLU dense -> classifier (b, s, tags))
    CNN     ids (b, s) -> embed (b, s, e), zeroed at padding -> conv1d of each width k, zero-padded by k-1 on both
            sides (every window that touches a token) -> ReLU -> max over time (b, filters * widths) -> classifier

Pooling is a masked max over time (Tang et al. concatenate the final states instead): every position gets a
gradient, and padding is easy to exclude exactly.

Why the backward LSTM is a second unidirectional LSTM: `nn.LSTM(bidirectional=True)` over a right-padded batch
reads the pads first in its backward pass, which changes the states of the real tokens, and pack_padded_sequence
does not export to ONNX. Here each sequence is reversed *within its own length* by a gather (pads stay at the
end), a forward LSTM reads it, and the same gather puts the states back in place: exact, and plain ONNX ops.

The file is self-contained (torch and transformers only): `save_pretrained` copies it beside the weights and
writes `auto_map` into config.json, so plain transformers loads an output with `trust_remote_code=True`.
Importing it as `slmkit.student_models` registers the classes with the Auto* factories instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

BILSTM_TYPE = "slm_bilstm"
CNN_TYPE = "slm_cnn"


class BiLSTMConfig(PreTrainedConfig):
    """A BiLSTM classifier's shape. `hidden_size` is the LSTM width per direction; `num_hidden_layers` is 0
    (there are no transformer layers to match in layer-wise distillation)."""

    model_type = BILSTM_TYPE
    vocab_size: int = 30522
    embed_size: int = 128  # word-piece embedding width
    hidden_size: int = 300  # LSTM units per direction
    lstm_layers: int = 1  # stacked BiLSTM layers
    dense_size: int | None = None  # the ReLU layer before the classifier; default hidden_size
    dropout: float = 0.1  # on the embeddings and before the dense and classifier layers
    pad_token_id: int | None = 0
    num_hidden_layers: int = 0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.dense_size is None:
            self.dense_size = self.hidden_size
        if min(self.vocab_size, self.embed_size, self.hidden_size, self.lstm_layers, self.dense_size) < 1:
            raise ValueError("vocab_size, embed_size, hidden_size, lstm_layers and dense_size must be positive")


class CNNConfig(PreTrainedConfig):
    """A CNN classifier's shape. `hidden_size` is the number of filters of each width (the pooled sentence vector
    has hidden_size * len(widths) features); `num_hidden_layers` is 0."""

    model_type = CNN_TYPE
    vocab_size: int = 30522
    embed_size: int = 128  # word-piece embedding width
    hidden_size: int = 256  # filters per width
    widths: list[int] | None = None  # convolution widths in tokens; default [2, 3, 4]
    dropout: float = 0.1  # on the embeddings and on the pooled vector
    pad_token_id: int | None = 0
    num_hidden_layers: int = 0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.widths is None:
            self.widths = [2, 3, 4]
        self.widths = [int(w) for w in self.widths]
        if min(self.vocab_size, self.embed_size, self.hidden_size, *self.widths) < 1:
            raise ValueError("vocab_size, embed_size, hidden_size and every width must be positive")


def _classifier_output(logits: torch.Tensor, labels: torch.Tensor | None) -> SequenceClassifierOutput:
    loss = F.cross_entropy(logits, labels) if labels is not None else None
    return SequenceClassifierOutput(loss=loss, logits=logits)


def _mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()


class _EmbeddingClassifier(PreTrainedModel):
    """What both students share: a word-embedding table (`self.embeddings`) read by input ids."""

    main_input_name = "input_ids"

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value


class BiLSTMForSequenceClassification(_EmbeddingClassifier):
    config_class = BiLSTMConfig

    def __init__(self, config: BiLSTMConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.embed_size)
        widths = [config.embed_size] + [2 * config.hidden_size] * (config.lstm_layers - 1)
        self.forward_lstms = nn.ModuleList(nn.LSTM(w, config.hidden_size, batch_first=True) for w in widths)
        self.backward_lstms = nn.ModuleList(nn.LSTM(w, config.hidden_size, batch_first=True) for w in widths)
        self.dropout = nn.Dropout(config.dropout)
        self.dense = nn.Linear(2 * config.hidden_size, config.dense_size)
        self.classifier = nn.Linear(config.dense_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **kwargs) -> SequenceClassifierOutput:
        """`token_type_ids` and the output_* flags are accepted and ignored (no token types, no layers)."""
        mask = _mask(input_ids, attention_mask)  # (b, s)
        x = self._states(input_ids, mask)  # (b, s, 2h)
        # LSTM outputs lie in (-1, 1): filling pads with -1 leaves the max over the real tokens unchanged
        pooled = x.masked_fill(~mask.unsqueeze(-1), -1.0).max(dim=1).values  # (b, 2h)
        hidden = F.relu(self.dense(self.dropout(pooled)))  # (b, d)
        return _classifier_output(self.classifier(self.dropout(hidden)), labels)

    def _states(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The last BiLSTM layer's states (b, s, 2h): forward and backward, each read within its own length."""
        lengths = mask.sum(1, keepdim=True)  # (b, 1)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)  # (1, s)
        # reverse each sequence within its length; pads map to themselves (an involution: it also un-reverses)
        reverse = torch.where(positions < lengths, lengths - 1 - positions, positions)  # (b, s)
        x = self.dropout(self.embeddings(input_ids))  # (b, s, e)
        for forward_lstm, backward_lstm in zip(self.forward_lstms, self.backward_lstms):
            ahead, _ = forward_lstm(x)  # (b, s, h): pads come after the tokens, so never reach them
            back, _ = backward_lstm(_gather_time(x, reverse))
            x = torch.cat([ahead, _gather_time(back, reverse)], dim=-1)  # (b, s, 2h)
        return x


class BiLSTMForTokenClassification(BiLSTMForSequenceClassification):
    """The same BiLSTM with a per-token head (NER): each token's states go through the ReLU layer and the
    classifier, so a word's tag reads both its left and right context. (A CRF on top is not included: with
    first-piece labels and BIO repair at decoding, its gain on small students is small.)"""

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **kwargs) -> TokenClassifierOutput:
        mask = _mask(input_ids, attention_mask)  # (b, s)
        hidden = F.relu(self.dense(self.dropout(self._states(input_ids, mask))))  # (b, s, d)
        logits = self.classifier(self.dropout(hidden))  # (b, s, n_tags)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100) if labels is not None else None
        return TokenClassifierOutput(loss=loss, logits=logits)


def _gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (b, s, f) reordered along time by index (b, s)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class CNNForSequenceClassification(_EmbeddingClassifier):
    config_class = CNNConfig

    def __init__(self, config: CNNConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.embed_size)
        # padding k-1 on both sides: output j covers tokens j-k+1 .. j, so every window touching a token exists
        self.convs = nn.ModuleList(nn.Conv1d(config.embed_size, config.hidden_size, k, padding=k - 1) for k in config.widths)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden_size * len(config.widths), config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **kwargs) -> SequenceClassifierOutput:
        """`token_type_ids` and the output_* flags are accepted and ignored (no token types, no layers)."""
        mask = _mask(input_ids, attention_mask)  # (b, s)
        lengths = mask.sum(1, keepdim=True)  # (b, 1)
        x = self.dropout(self.embeddings(input_ids)) * mask.unsqueeze(-1)  # (b, s, e); pads read as the zero padding
        x = x.transpose(1, 2)  # (b, e, s)
        pooled = []
        for conv, k in zip(self.convs, self.config.widths):
            features = F.relu(conv(x))  # (b, f, s + k - 1)
            ends = torch.arange(features.shape[-1], device=x.device).unsqueeze(0)  # (1, s + k - 1)
            touches_a_token = (ends < lengths + k - 1).unsqueeze(1)  # (b, 1, s + k - 1)
            # ReLU outputs are >= 0: zeroing the windows that hold only pads leaves the max unchanged
            pooled.append(features.masked_fill(~touches_a_token, 0.0).max(dim=-1).values)  # (b, f)
        return _classifier_output(self.classifier(self.dropout(torch.cat(pooled, dim=-1))), labels)


def register() -> None:
    """Make AutoConfig / AutoModelForSequenceClassification know `slm_bilstm` and `slm_cnn`, and make
    save_pretrained copy this file and write `auto_map` so that the output also loads with trust_remote_code."""
    for config_class, model_class in ((BiLSTMConfig, BiLSTMForSequenceClassification), (CNNConfig, CNNForSequenceClassification)):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModelForSequenceClassification.register(config_class, model_class, exist_ok=True)
        config_class.register_for_auto_class("AutoConfig")
        model_class.register_for_auto_class("AutoModelForSequenceClassification")
    AutoModelForTokenClassification.register(BiLSTMConfig, BiLSTMForTokenClassification, exist_ok=True)
    BiLSTMForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")


if __name__ == "slmkit.student_models":  # as remote code, transformers resolves the classes through auto_map
    register()
