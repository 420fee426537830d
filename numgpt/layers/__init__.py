"""Every GPT-2 layer as a pair of pure functions.

``X_forward(inputs..., params...) -> (out, cache)`` and
``X_backward(dout, cache) -> grads``, the gradients in the order of the forward's
differentiable arguments. No hidden state: the cache carries what the backward
needs. Each module's docstring states the forward and the gradient; the
step-by-step derivations are in docs/derivations/.
"""

from .attention import attention_backward, attention_forward, attention_step_forward
from .cross_entropy import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from .dropout import dropout_backward, dropout_forward
from .embedding import embedding_backward, embedding_forward
from .gelu import gelu_backward, gelu_forward
from .layernorm import layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward
from .softmax import softmax_backward, softmax_forward

__all__ = [
    "attention_forward", "attention_backward", "attention_step_forward",
    "dropout_forward", "dropout_backward",
    "embedding_forward", "embedding_backward",
    "gelu_forward", "gelu_backward",
    "layernorm_forward", "layernorm_backward",
    "linear_forward", "linear_backward",
    "softmax_forward", "softmax_backward",
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
]

from .relu_squared import relu_squared_backward, relu_squared_forward
from .rmsnorm import rmsnorm_backward, rmsnorm_forward
from .rope import rope_backward, rope_forward
from .swiglu import swiglu_backward, swiglu_forward

__all__ += [
    "relu_squared_forward", "relu_squared_backward",
    "rmsnorm_forward", "rmsnorm_backward",
    "rope_forward", "rope_backward",
    "swiglu_forward", "swiglu_backward",
]
