"""SAM's mask decoder for many point prompts on ONE image, with the shared work done once.

Same parameters, same mathematics as ``segment_anything.modeling.MaskDecoder.forward`` (outputs equal up
to float rounding; tests/test_proposals.py checks it), reorganised for everything mode where hundreds of
prompts share one image embedding:

- The image tokens are not copied per prompt: in the first block they are identical for every prompt,
  so their projections are computed once and broadcast.
- Attention with few tokens against 4096 image tokens is folded through the projections: scores are
  ``(W_k^T q) . x`` instead of ``q . (W_k x)``, and values ``(attn @ x) W_v^T`` instead of
  ``attn @ (x W_v^T)``, so no per-prompt 4096 x 256 projection is materialised (softmax is invariant to the
  dropped per-query key-bias term; attention rows sum to 1, so the value bias passes through).
- Optional early rejection (``skip_iou_below``, set by the everything-mode caller to theta): the IoU head
  only needs the transformer's output tokens, so prompts none of whose returned masks can pass the
  predicted-IoU filter skip the upscaling and get constant -1e4 logits; exact for a caller that discards
  masks with predicted IoU <= theta anyway.
- The output upscaling (two stride-2 2x2 transposed convolutions + LayerNorm2d + GELU) runs as per-pixel
  GEMMs in token-major layout, one kernel-tap row pair at a time, so the hypernetwork product (only the
  returned mask tokens, 3 of 4 in multimask mode) comes out as whole output rows; GELUs run in place.
- On CPU the large per-chunk intermediates live in scratch buffers reused by every chunk of a call
  (``_Workspace``): a fresh ~30-70 MB tensor per chunk costs page faults comparable to the work on it.
- ``keys + pe`` is never materialised per prompt once the keys differ per prompt: its attention scores are
  ``keys . q + pe . q`` with the pe term one shared GEMM; the image-to-token attention adds its residual
  inside the same ``baddbmm`` (the output bias folded into the value rows), and its softmax over the few
  prompt tokens is written out (torch's kernel is slow on rows of 7).

Prompts with dense (mask) inputs that differ per prompt fall back to the original decoder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fast_decoder_for(model: Any, chunk: int | None = None) -> FastMaskDecoder:
    """The model's FastMaskDecoder (created once and kept outside the module tree, so ``state_dict`` is
    unchanged); ``chunk`` updates its prompt chunk size."""
    fast = model.__dict__.get("_dtwinseg_fast_decoder")
    if fast is None:
        fast = FastMaskDecoder(model.mask_decoder)
        object.__setattr__(model, "_dtwinseg_fast_decoder", fast)
    if chunk is not None:
        fast.chunk = chunk
    return fast


class FastMaskDecoder(nn.Module):
    """Drop-in for ``MaskDecoder.forward`` (same arguments and outputs) when all prompts share one image.

    Args:
        decoder: a segment-anything ``MaskDecoder`` (its weights are used, not copied).
        chunk: prompts processed together (bounds memory: ~50 MB per prompt in float32).
    """

    def __init__(self, decoder: Any, chunk: int = 16):
        super().__init__()
        self.decoder = decoder
        self.chunk = chunk
        self.skip_iou_below: float | None = None
        # test / benchmark hook: (start, end) of the prompts in the current chunk -> IoUs deciding the skip
        self.gate_ious: Callable[[int, int], Tensor] | None = None
        self.last_skipped = 0

    def forward(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                dense_prompt_embeddings: Tensor, multimask_output: bool) -> tuple[Tensor, Tensor]:
        """image_embeddings 1 x C x h x w, image_pe 1 x C x h x w, sparse B x P x C, dense B x C x h x w
        -> masks B x (3 | 1) x 4h x 4w logits, iou B x (3 | 1)."""
        dense = dense_prompt_embeddings
        if image_embeddings.shape[0] != 1 or (dense.shape[0] > 1 and dense.stride(0) != 0):
            return self.decoder(image_embeddings=image_embeddings, image_pe=image_pe,
                                sparse_prompt_embeddings=sparse_prompt_embeddings,
                                dense_prompt_embeddings=dense, multimask_output=multimask_output)
        src = (image_embeddings + dense[:1]).flatten(2).transpose(1, 2)  # 1 x N x C, shared
        pos = image_pe.flatten(2).transpose(1, 2)
        sel = slice(1, None) if multimask_output else slice(0, 1)
        masks, ious = [], []
        self.last_skipped = 0
        ws = _Workspace(src)  # scratch shared by this call's chunks, freed on return
        for start in range(0, sparse_prompt_embeddings.shape[0], self.chunk):
            chunk = sparse_prompt_embeddings[start:start + self.chunk]
            m, i = self._predict(src, pos, chunk, image_embeddings.shape[-2:], sel, (start, start + len(chunk)), ws)
            masks.append(m)
            ious.append(i)
        mask, iou = torch.cat(masks), torch.cat(ious)
        return mask, iou[:, sel]

    def _predict(self, src: Tensor, pos: Tensor, sparse: Tensor, hw: torch.Size, sel: slice,
                 span: tuple[int, int], ws: _Workspace) -> tuple[Tensor, Tensor]:
        d = self.decoder
        tr = d.transformer
        b = sparse.shape[0]
        out_tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)  # B x T x C
        queries, keys = tokens, src
        for layer in tr.layers:
            queries, keys = _block(layer, queries, keys, tokens, pos, ws)
        attn_out = _token_to_image(tr.final_attn_token_to_image, queries + tokens, keys, pos, ws)
        queries = tr.norm_final_attn(queries + attn_out)
        iou_pred = d.iou_prediction_head(queries[:, 0])
        mask_tokens = queries[:, 1:1 + d.num_mask_tokens]
        wanted = range(d.num_mask_tokens)[sel]  # the mask tokens returned: no work on the others
        hyper = torch.stack([d.output_hypernetworks_mlps[i](mask_tokens[:, i]) for i in wanted], 1)
        if self.skip_iou_below is None:
            return _upscale_and_project(d.output_upscaling, keys, hyper, hw, ws), iou_pred
        gate = self.gate_ious(*span) if self.gate_ious is not None else iou_pred[:, sel]
        keep = (gate > self.skip_iou_below).any(dim=1)
        masks = keys.new_full((b, hyper.shape[1], 4 * hw[0], 4 * hw[1]), -1e4)
        if keep.any():
            masks[keep] = _upscale_and_project(d.output_upscaling, keys[keep], hyper[keep], hw, ws)
        self.last_skipped += int((~keep).sum())
        return masks, iou_pred


def _block(layer: Any, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor,
           ws: _Workspace) -> tuple[Tensor, Tensor]:
    """TwoWayAttentionBlock.forward with the folded cross-attentions (keys: 1 or B x N x C). Both
    cross-attentions see keys + key_pe; it is never materialised per prompt (the pe term is shared)."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    queries = layer.norm2(queries + _token_to_image(layer.cross_attn_token_to_image, queries + query_pe, keys, key_pe,
                                                    ws))
    queries = layer.norm3(queries + layer.mlp(queries))
    keys = layer.norm4(_image_to_token(layer.cross_attn_image_to_token, keys, key_pe, queries + query_pe, queries, ws))
    return queries, keys


def _baddbmm_onto(acc: Tensor, b1: Tensor, b2: Tensor) -> Tensor:
    """acc + b1 @ b2, accumulated into ``acc`` (this decoder's own intermediate) unless autocast may mix dtypes."""
    if torch.is_autocast_enabled(acc.device.type):
        return torch.baddbmm(acc, b1, b2)
    return acc.baddbmm_(b1, b2)


def _heads(attn: Any) -> tuple[int, int]:
    return attn.num_heads, attn.internal_dim // attn.num_heads


def _token_to_image(attn: Any, q: Tensor, keys: Tensor, pe: Tensor, ws: _Workspace) -> Tensor:
    """Attention(q=q, k=keys + pe, v=keys): q B x T x C, keys 1|B x N x C, pe 1 x N x C -> B x T x C."""
    b, t, c = q.shape
    n = keys.shape[1]
    h, dh = _heads(attn)
    qh = attn.q_proj(q).view(b, t, h, dh)
    q_folded = torch.einsum("bthd,hdc->bhtc", qh, attn.k_proj.weight.view(h, dh, c)).reshape(b, h * t, c)
    q_folded = q_folded / math.sqrt(dh)
    scores = ws.get("scores", (b * h * t, n), keys)
    if keys.shape[0] == 1:
        scores = torch.mm(q_folded.reshape(b * h * t, c), (keys[0] + pe[0]).T, out=scores).view(b, h * t, n)
    else:  # (keys + pe) k = keys k + pe k: the pe term is one shared GEMM, the rest accumulates onto it
        scores = torch.mm(q_folded.reshape(b * h * t, c), pe[0].T, out=scores).view(b, h * t, n)
        scores = _baddbmm_onto(scores, q_folded, keys.transpose(1, 2))
    probs = torch.softmax(scores, dim=-1, out=ws.get("probs", (b, h * t, n), scores))
    if keys.shape[0] == 1:
        pooled = (probs.reshape(b * h * t, -1) @ keys[0]).view(b, h, t, c)
    else:
        pooled = torch.bmm(probs, keys).view(b, h, t, c)
    v = torch.einsum("bhtc,hdc->bthd", pooled, attn.v_proj.weight.view(h, dh, c)) + attn.v_proj.bias.view(h, dh)
    return attn.out_proj(v.reshape(b, t, h * dh))


def _image_to_token(attn: Any, keys: Tensor, pe: Tensor, k_tokens: Tensor, v_tokens: Tensor,
                    ws: _Workspace) -> Tensor:
    """keys + Attention(q=keys + pe, k=k_tokens, v=v_tokens) (the block's residual included): keys 1|B x
    N x C image tokens, pe 1 x N x C, tokens B x T x C -> B x N x C."""
    b, t, c = k_tokens.shape
    n = keys.shape[1]
    h, dh = _heads(attn)
    kh = attn.k_proj(k_tokens).view(b, t, h, dh) / math.sqrt(dh)
    k_folded = torch.einsum("bthd,hdc->bhtc", kh, attn.q_proj.weight.view(h, dh, c)).reshape(b, h * t, c)
    bias = torch.einsum("bthd,hd->bht", kh, attn.q_proj.bias.view(h, dh)).reshape(b, h * t, 1)
    shared = keys[0] + pe[0] if keys.shape[0] == 1 else pe[0]  # per-prompt keys: only the pe term is shared
    # scores laid out (B, h * t, N): each head's softmax over its t tokens (rows of 7) then reduces across
    # rows of N contiguous values, which vectorises (a reduction along rows of 7 does not)
    term = torch.addmm(bias.reshape(b * h * t, 1), k_folded.reshape(b * h * t, c), shared.T,
                       out=ws.get("scores", (b * h * t, n), keys)).view(b, h * t, n)
    scores = term if keys.shape[0] == 1 else _baddbmm_onto(term, k_folded, keys.transpose(1, 2))
    s = scores.view(b, h, t, n)
    s = s.sub_(s.amax(2, keepdim=True)).exp_()  # scores are this decoder's own intermediate
    probs = s.div_(s.sum(2, keepdim=True)).view(b, h * t, n).transpose(1, 2)  # B x N x (h * t), a view
    vh = attn.v_proj(v_tokens).view(b, t, h, dh)
    v_out = torch.einsum("bthd,chd->bhtc", vh, attn.out_proj.weight.view(c, h, dh)).reshape(b, h * t, c)
    # every head's probabilities sum to 1, so bias / h on each of the h * t value rows adds the bias once
    v_out = v_out + attn.out_proj.bias / h
    if keys.shape[0] == 1:  # shared keys: the residual starts from a broadcast copy
        return torch.baddbmm(keys.expand(b, n, c), probs, v_out, out=ws.get("image_to_token", (b, n, c), keys))
    # per-prompt keys are this decoder's own intermediate, not used after the residual
    return _baddbmm_onto(keys, probs, v_out)


class _Workspace:
    """Scratch tensors reused across the prompt chunks of one forward call (CPU, no autocast only).

    On CPU each fresh multi-MB tensor is a new mapping whose pages are faulted in and zeroed on first
    write; for the upscaling's ~30 MB intermediates that costs as much as the GELU and LayerNorm on them.
    Reusing the same buffers for every chunk pays that once per call. Disabled (every op allocates as
    usual) on GPUs, where the caching allocator already reuses memory, and under autocast, which does not
    take ``out=`` arguments.
    """

    def __init__(self, like: Tensor, enabled: bool = True):
        self.enabled = enabled and like.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
        self.buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor | None:
        if not self.enabled:
            return None
        numel = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype:
            buf = self.buffers[name] = like.new_empty(numel)
        return buf[:numel].view(shape)


def _act(f: nn.Module, t: Tensor) -> Tensor:
    """``f(t)``, in place for SAM's GELU (no second ~30 MB tensor)."""
    return torch.ops.aten.gelu_(t, approximate=f.approximate) if isinstance(f, nn.GELU) else f(t)


def _upscale_and_project(upscaling: nn.Sequential, keys: Tensor, hyper: Tensor, hw: torch.Size,
                         ws: _Workspace) -> Tensor:
    """output_upscaling (convT 2x2/2, LayerNorm2d, act, convT 2x2/2, act) on B x N x C tokens as per-pixel
    GEMMs, then the hypernetwork product: -> B x M x 4h x 4w mask logits.

    Output row 4y + 2 i1 + i2 and column 4x + 2 j1 + j2 come from low-res pixel (y, x) and the two
    convolutions' kernel taps (i1, j1), (i2, j2). Each (i1, i2) pair is computed on its own: the first GEMM
    takes the columns of tap row i1 (rows (y, x), columns (j1, C1) = rows (y, 2x + j1)), the second the
    columns of tap row i2 (columns (j2, C2)), so the hypernetwork product comes out as whole output rows
    4y + 2 i1 + i2 (B x M x h x 4w) and lands with one strided copy of 4w-float runs, instead of an 8-D
    permutation of 2-float runs.
    """
    ct1, ln, act1, ct2, act2 = upscaling
    b, n, c = keys.shape
    h, w = hw
    c1, c2 = ct1.out_channels, ct2.out_channels
    m = hyper.shape[1]
    out = None  # B x M x h x 2 x 2 x 4w: rows (y, i1, i2) = 4y + 2 i1 + i2; dtype of the products (autocast)
    x = keys.reshape(b * n, c)
    for i1 in range(2):
        w1 = ct1.weight[:, :, i1].permute(0, 2, 1).reshape(c, 2 * c1)  # (C_in, [j1, C1])
        y = torch.addmm(ct1.bias.repeat(2), x, w1, out=ws.get("y1", (b * n, 2 * c1), x)).view(b * n * 2, c1)
        y = F.layer_norm(y, (c1,), ln.weight, ln.bias, ln.eps)
        y = _act(act1, y)
        for i2 in range(2):
            w2 = ct2.weight[:, :, i2].permute(0, 2, 1).reshape(c1, 2 * c2)  # (C1, [j2, C2])
            z = torch.addmm(ct2.bias.repeat(2), y, w2, out=ws.get("y2", (b * n * 2, 2 * c2), y))
            z = _act(act2, z)
            # rows (y, x, j1, j2) = (y, 4x + 2 j1 + j2): B x M x (h * 4w), whole output rows
            rows = torch.bmm(hyper, z.view(b, n * 4, c2).transpose(1, 2), out=ws.get("mk", (b, m, n * 4), z))
            if out is None:
                out = rows.new_empty((b, m, h, 2, 2, 4 * w))
            out[:, :, :, i1, i2] = rows.view(b, m, h, 4 * w)
    return out.view(b, m, 4 * h, 4 * w)
