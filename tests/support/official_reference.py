"""An independent, functional forward pass of the official DETR.

It reads weights straight from an *official-layout* state_dict
(``backbone.0.body.*``, ``transformer.*``, ``class_embed``, ``bbox_embed``,
``query_embed``, ``input_proj``) and runs the official computation in its own
sequence-first layout with ``F.multi_head_attention_forward``: ResNet v1.5
with frozen batch norm, nearest-resized mask, sine positional encoding,
post-norm encoder/decoder, final decoder norm on every layer, class and box
heads. Evaluation mode only (no dropout). It shares no code with detr_ray.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _bn(sd, prefix, x):
    w, b = sd[prefix + ".weight"], sd[prefix + ".bias"]
    rm, rv = sd[prefix + ".running_mean"], sd[prefix + ".running_var"]
    scale = w * (rv + 1e-5).rsqrt()
    return x * scale[None, :, None, None] + (b - rm * scale)[None, :, None, None]


def _resnet(sd, x, depth, dilation):
    p = "backbone.0.body."
    x = F.relu(_bn(sd, p + "bn1", F.conv2d(x, sd[p + "conv1.weight"], stride=2, padding=3)))
    x = F.max_pool2d(x, 3, 2, 1)
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    current_dilation = 1
    for stage, n in enumerate(blocks):
        stride = 1 if stage == 0 else 2
        first_dilation = current_dilation
        if dilation and stage == 3:
            current_dilation *= stride
            stride = 1
        for i in range(n):
            q = f"{p}layer{stage + 1}.{i}."
            s = stride if i == 0 else 1
            d = first_dilation if i == 0 else current_dilation
            identity = x
            if q + "downsample.0.weight" in sd:
                identity = _bn(
                    sd, q + "downsample.1", F.conv2d(x, sd[q + "downsample.0.weight"], stride=s)
                )
            if depth >= 50:
                out = F.relu(_bn(sd, q + "bn1", F.conv2d(x, sd[q + "conv1.weight"])))
                out = F.relu(
                    _bn(
                        sd,
                        q + "bn2",
                        F.conv2d(out, sd[q + "conv2.weight"], stride=s, padding=d, dilation=d),
                    )
                )
                out = _bn(sd, q + "bn3", F.conv2d(out, sd[q + "conv3.weight"]))
            else:
                out = F.relu(
                    _bn(sd, q + "bn1", F.conv2d(x, sd[q + "conv1.weight"], stride=s, padding=1))
                )
                out = _bn(sd, q + "bn2", F.conv2d(out, sd[q + "conv2.weight"], padding=1))
            x = F.relu(out + identity)
    return x


def _sine(mask, num_feats):
    not_mask = (~mask).float()
    y = not_mask.cumsum(1)
    x = not_mask.cumsum(2)
    y = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi
    x = x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    i = torch.arange(num_feats, dtype=torch.float32)
    dim_t = 10000 ** (2 * (i // 2) / num_feats)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    out_x = torch.empty_like(px)
    out_y = torch.empty_like(py)
    out_x[..., 0::2], out_x[..., 1::2] = px[..., 0::2].sin(), px[..., 1::2].cos()
    out_y[..., 0::2], out_y[..., 1::2] = py[..., 0::2].sin(), py[..., 1::2].cos()
    return torch.cat([out_y, out_x], -1).permute(0, 3, 1, 2)


def _mha(sd, prefix, q, k, v, nhead, key_padding_mask=None):
    out, _ = F.multi_head_attention_forward(
        q,
        k,
        v,
        q.shape[-1],
        nhead,
        sd[prefix + ".in_proj_weight"],
        sd[prefix + ".in_proj_bias"],
        None,
        None,
        False,
        0.0,
        sd[prefix + ".out_proj.weight"],
        sd[prefix + ".out_proj.bias"],
        training=False,
        key_padding_mask=key_padding_mask,
        need_weights=False,
    )
    return out


def _ln(sd, prefix, x):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"])


def _ffn(sd, prefix, x):
    h = F.relu(F.linear(x, sd[prefix + ".linear1.weight"], sd[prefix + ".linear1.bias"]))
    return F.linear(h, sd[prefix + ".linear2.weight"], sd[prefix + ".linear2.bias"])


def official_forward(sd, images, padding_mask, depth, nhead, dilation=False):
    """Returns (class logits (L, B, Q, K+1), boxes (L, B, Q, 4))."""
    features = _resnet(sd, images, depth, dilation)
    mask = F.interpolate(padding_mask[None].float(), size=features.shape[-2:])[0].bool()
    src = F.conv2d(features, sd["input_proj.weight"], sd["input_proj.bias"])
    b, c, h, w = src.shape
    pos = _sine(mask, c // 2).flatten(2).permute(2, 0, 1)  # (HW, B, C)
    src = src.flatten(2).permute(2, 0, 1)
    mask = mask.flatten(1)
    n_enc = len({k.split(".")[3] for k in sd if k.startswith("transformer.encoder.layers.")})
    n_dec = len({k.split(".")[3] for k in sd if k.startswith("transformer.decoder.layers.")})
    pre = "transformer.encoder.norm.weight" in sd  # --pre_norm
    for i in range(n_enc):
        p = f"transformer.encoder.layers.{i}"
        if pre:
            x = _ln(sd, p + ".norm1", src)
            src = src + _mha(sd, p + ".self_attn", x + pos, x + pos, x, nhead, mask)
            src = src + _ffn(sd, p, _ln(sd, p + ".norm2", src))
            continue
        q = src + pos
        src = _ln(sd, p + ".norm1", src + _mha(sd, p + ".self_attn", q, q, src, nhead, mask))
        src = _ln(sd, p + ".norm2", src + _ffn(sd, p, src))
    if pre:
        src = _ln(sd, "transformer.encoder.norm", src)
    query_pos = sd["query_embed.weight"][:, None].repeat(1, b, 1)  # (Q, B, C)
    tgt = torch.zeros_like(query_pos)
    hs = []
    for i in range(n_dec):
        p = f"transformer.decoder.layers.{i}"
        if pre:
            x = _ln(sd, p + ".norm1", tgt)
            tgt = tgt + _mha(sd, p + ".self_attn", x + query_pos, x + query_pos, x, nhead)
            x = _ln(sd, p + ".norm2", tgt)
            tgt = tgt + _mha(sd, p + ".multihead_attn", x + query_pos, src + pos, src, nhead, mask)
            tgt = tgt + _ffn(sd, p, _ln(sd, p + ".norm3", tgt))
            hs.append(_ln(sd, "transformer.decoder.norm", tgt))
            continue
        q = tgt + query_pos
        tgt = _ln(sd, p + ".norm1", tgt + _mha(sd, p + ".self_attn", q, q, tgt, nhead))
        tgt = _ln(
            sd,
            p + ".norm2",
            tgt + _mha(sd, p + ".multihead_attn", tgt + query_pos, src + pos, src, nhead, mask),
        )
        tgt = _ln(sd, p + ".norm3", tgt + _ffn(sd, p, tgt))
        hs.append(_ln(sd, "transformer.decoder.norm", tgt))
    hs = torch.stack(hs).transpose(1, 2)  # (L, B, Q, C)
    logits = F.linear(hs, sd["class_embed.weight"], sd["class_embed.bias"])
    x = hs
    for j in range(3):
        x = F.linear(x, sd[f"bbox_embed.layers.{j}.weight"], sd[f"bbox_embed.layers.{j}.bias"])
        if j < 2:
            x = F.relu(x)
    return logits, x.sigmoid()
