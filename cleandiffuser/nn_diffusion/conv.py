"""1-D convolutions that act and train fast on CPU.

Acting: PyTorch sends small 1-D convolutions (batch 1, short sequences: the deep levels of a temporal U-Net) to its
reference kernel instead of oneDNN; at batch 1 a 256-channel, length-4 convolution took 413 us there against 75 us
as a channels-last 2-D convolution. Single-sample inference on CPU (acting) with >= 128 input channels runs that
way, with the 2-D weight cached until the parameters change (measured 2.5-8x faster there; at 64 channels or
batch 64 the stock path was as fast or faster).

Training in bf16: oneDNN's bf16 1-D convolution (and its backward, the largest cost of a U-Net update) is no faster
than fp32 on short sequences, while a bf16 matmul is ~4.5x faster than fp32 on this CPU. Under CPU bf16 autocast a
stride-1 convolution is therefore computed as one matmul over im2col patches (`GemmConv1d`), backward included:
a U-Net update ran 1.2-2.3x faster than in fp32 (results/bench_imitation_train.md). fp32 and other devices use the
stock path.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class _CachedWeight:
    """A detached transform of the weight (a layout or a cast), rebuilt when the parameter is replaced or changed in
    place (its version counter); a frozen teacher called several times per update, or a policy acting, transforms it
    once."""

    def __init__(self, transform):
        self.transform = transform
        self.key, self.value = None, None

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        key = (weight.data_ptr(), weight._version, weight.dtype)
        if key != self.key:
            self.key = key
            self.value = self.transform(weight.detach())
        return self.value


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    """(B, C, L) inputs and (O, C, k) weights -> (., ., 1, L or k), channels-last."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def _to_bf16(weight: torch.Tensor) -> torch.Tensor:
    return weight.to(torch.bfloat16)


FAST_MIN_CHANNELS = 128


def _inference_on_cpu(module: nn.Module, x: torch.Tensor) -> bool:
    return (not torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 3 and x.shape[0] == 1
            and module.in_channels >= FAST_MIN_CHANNELS and x.dtype == module.weight.dtype
            and module.padding_mode == "zeros")


BF16_GEMM = True  # False: bf16 autocast convolutions on CPU take oneDNN's path (benchmarks compare the two)


def _gemm_on_cpu(module: nn.Conv1d, x: torch.Tensor) -> bool:
    return (BF16_GEMM and x.device.type == "cpu" and x.dim() == 3 and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and module.stride[0] == 1
            and module.dilation[0] == 1 and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str) and 2 * module.padding[0] == module.kernel_size[0] - 1)


def _patches(x_blc: torch.Tensor, k: int, pad: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, L, C) -> (B * L, C * k) patches in dtype, ordered (channel, tap) like a flattened conv weight, so the
    weight needs no copy; pad = (k - 1) // 2 zeros each side. One copy casts, pads and lays x out channels-last,
    a second gathers the patches (none for k = 1)."""
    B, L, C = x_blc.shape
    if k == 1:
        return x_blc.to(dtype).reshape(B * L, C)
    padded = x_blc.new_zeros(B, L + 2 * pad, C, dtype=dtype)
    padded[:, pad:pad + L] = x_blc
    return padded.unfold(1, k, 1).reshape(B * L, C * k)


class GemmConv1d(torch.autograd.Function):
    """Stride-1, same-padded conv1d as one matmul over patches: x (B, C, L), weight (O, C, k), bias (O,) or None,
    computed with weight_lowp (the weight, detached, in the compute dtype); gradients go to x, weight and bias in
    their own dtypes. The weight gradient is one matmul with the saved patches; the input gradient adds the patch
    gradients back tap by tap, in fp32 (no weight is permuted or flipped)."""

    @staticmethod
    def forward(ctx, x, weight, bias, weight_lowp):
        B, C, L = x.shape
        O, _, k = weight.shape
        pad = (k - 1) // 2
        cols = _patches(x.transpose(1, 2), k, pad, weight_lowp.dtype)
        w2 = weight_lowp.reshape(O, C * k)
        y = cols @ w2.t() if bias is None else torch.addmm(bias.to(w2.dtype), cols, w2.t())
        ctx.save_for_backward(cols, w2)
        ctx.dims = (B, C, L, O, k, pad, x.dtype)
        return y.view(B, L, O).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_y):
        cols, w2 = ctx.saved_tensors
        B, C, L, O, k, pad, x_dtype = ctx.dims
        gy = grad_y.transpose(1, 2).to(w2.dtype).reshape(B * L, O)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_cols = (gy @ w2).view(B, L, C, k)
            grad_padded = grad_cols.new_zeros(B, L + 2 * pad, C, dtype=torch.promote_types(x_dtype, torch.float32))
            for tap in range(k):  # col2im: output position l read input position l + tap - pad
                grad_padded[:, tap:tap + L] += grad_cols[..., tap]
            grad_x = grad_padded[:, pad:pad + L].transpose(1, 2).to(x_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (gy.t() @ cols).view(O, C, k)
        if ctx.needs_input_grad[2]:
            grad_b = gy.sum(0, dtype=torch.promote_types(gy.dtype, torch.float32))
        return grad_x, grad_w, grad_b, None


class Conv1d(nn.Conv1d):
    """nn.Conv1d (same parameters and state dict) with the fast CPU paths: bf16 training, batch-1 acting."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._weight_2d = _CachedWeight(_as_2d)
        self._weight_bf16 = _CachedWeight(_to_bf16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _gemm_on_cpu(self, x):
            # a trained weight is cast every call: fused AdamW and updates through .data bump no version counter
            weight = self.weight
            lowp = weight.detach().to(torch.bfloat16) if weight.requires_grad else self._weight_bf16.get(weight)
            with torch.autocast("cpu", enabled=False):  # bf16 like autocast's own convolution
                return GemmConv1d.apply(x, weight, self.bias, lowp)
        if not _inference_on_cpu(self, x):
            return super().forward(x)
        padding = self.padding if isinstance(self.padding, str) else (0, self.padding[0])
        y = F.conv2d(_as_2d(x), self._weight_2d.get(self.weight), self.bias, (1, self.stride[0]), padding,
                     (1, self.dilation[0]), self.groups)
        return y.squeeze(2).contiguous()


class ConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d (same parameters and state dict) with the fast CPU inference path."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._weight_2d = _CachedWeight(_as_2d)

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if output_size is not None or not _inference_on_cpu(self, x):
            return super().forward(x, output_size)
        y = F.conv_transpose2d(_as_2d(x), self._weight_2d.get(self.weight), self.bias, (1, self.stride[0]),
                               (0, self.padding[0]), (0, self.output_padding[0]), self.groups, (1, self.dilation[0]))
        return y.squeeze(2).contiguous()
