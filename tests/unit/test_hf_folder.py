"""Hugging Face checkpoint folders: what transformers saves, and the hub's own layout.

transformers itself builds a randomly initialised ``DeformableDetrForObjectDetection``
or ``DetrForObjectDetection`` of a small hub-like configuration and saves it
(``save_pretrained``: ``config.json`` + ``model.safetensors``, and the image
processor's ``preprocessor_config.json``). ``detr-ray predict`` on that folder
gives the detections transformers' own processor, model and post-processing
give for the same image.

The hub's files are older: transformers 4 names (``backbone.conv_encoder``,
``fc1``, ``out_proj``) and a timm ResNet (``use_timm_backbone``; its
weights under torchvision's names). transformers cannot build a timm
backbone here (timm needs torchvision, which does not import beside this
torch build), so the hub layout is made from the saved folder by renaming
its keys as transformers' own conversion map and timm's names say; it must
give exactly the same model.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file

from detr_ray.checkpoint import load_model, read_source
from detr_ray.errors import CheckpointError
from detr_ray.evaluation.predict import predict_images
from detr_ray.model.official import COCO_CATEGORY_NAMES

SIZE = {"shortest_edge": 96, "longest_edge": 128}
ID2LABEL = {i: COCO_CATEGORY_NAMES.get(i, "N/A") for i in range(91)}


def _backbone(levels: bool):
    return transformers.ResNetConfig(
        depths=[2, 2, 2, 2],
        layer_type="basic",
        hidden_sizes=[64, 128, 256, 512],
        embedding_size=64,
        out_features=["stage2", "stage3", "stage4"] if levels else ["stage4"],
    )


def _hf_model(kind: str, refine: bool = False, two_stage: bool = False):
    common = dict(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone=None,
        num_labels=91,
        id2label=ID2LABEL,
        label2id={v: k for k, v in ID2LABEL.items()},
        num_queries=12,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
    )
    if kind == "detr":
        config = transformers.DetrConfig(backbone_config=_backbone(False), **common)
        model = transformers.DetrForObjectDetection(config)
    else:
        config = transformers.DeformableDetrConfig(
            backbone_config=_backbone(True),
            encoder_n_points=2,
            decoder_n_points=2,
            with_box_refine=refine,
            two_stage=two_stage,
            two_stage_num_proposals=12,
            disable_custom_kernels=True,
            **common,
        )
        model = transformers.DeformableDetrForObjectDetection(config)
    torch.manual_seed(0)
    with torch.no_grad():  # random everywhere, the frozen norms' statistics too
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                if name.endswith("running_var"):
                    tensor.uniform_(0.5, 1.5)
                else:
                    tensor.normal_(0, 0.1)
    return model.eval()


def _processor(kind: str):
    if kind == "detr":
        return transformers.DetrImageProcessorPil(size=SIZE)
    return transformers.DeformableDetrImageProcessorPil(size=SIZE)


def _saved(tmp_path, kind, **options):
    model, processor = _hf_model(kind, **options), _processor(kind)
    folder = tmp_path / f"{kind}-hf"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


def _image(tmp_path, height=90, width=110, seed=0):
    rng = np.random.default_rng(seed)
    path = tmp_path / "image.png"
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _hf_detections(model, processor, path):
    """transformers' own: processor, model, post-processing (every detection)."""
    image = Image.open(path).convert("RGB")
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    (found,) = processor.post_process_object_detection(
        outputs, threshold=0.0, target_sizes=[(image.height, image.width)]
    )
    order = found["scores"].argsort(descending=True)
    return [
        (int(found["labels"][i]), float(found["scores"][i]), found["boxes"][i].tolist())
        for i in order
    ]


@pytest.mark.parametrize(
    "kind, options",
    [
        ("deformable_detr", {}),
        ("deformable_detr", {"refine": True, "two_stage": True}),
        ("detr", {}),
    ],
    ids=["deformable", "deformable-two-stage", "detr"],
)
def test_predict_on_a_saved_folder_gives_transformers_detections(tmp_path, kind, options):
    folder, model, processor = _saved(tmp_path, kind, **options)
    image = _image(tmp_path)
    expected = _hf_detections(model, processor, image)
    out, count = predict_images(folder, [image], tmp_path / "out", score_threshold=0.0)
    (record,) = json.loads(out.read_text())
    got = record["detections"]
    assert count == 1 and len(got) == len(expected) == (100 if kind != "detr" else 12)
    for ours, (_, score, _) in zip(got, expected):  # the same scores, best first
        assert abs(ours["score"] - score) < 1e-4
    for ours in got:  # each detection is one of transformers' (scores may nearly tie)
        assert ours["name"] == ID2LABEL[ours["category_id"]]
        assert any(
            ours["category_id"] == label
            and abs(ours["score"] - score) < 1e-4
            and np.allclose(ours["box_xyxy"], box, atol=0.011)  # (written to 2 decimals)
            for label, score, box in expected
        ), ours
    loaded = load_model(folder)
    assert loaded.augmentation.val_scale == 96 and loaded.augmentation.max_size == 128
    assert loaded.model_config.family == kind and loaded.model_config.num_queries == 12


def _hub_layout(folder, target):
    """The saved folder as the hub ships it: transformers 4 names, a timm ResNet."""
    state = load_file(folder / "model.safetensors")
    renamed = {}
    for key, value in state.items():
        key = key.replace("model.backbone.model.", "model.backbone.conv_encoder.model.")
        key = re.sub(r"\.mlp\.fc([12])\.", r".fc\1.", key)
        key = key.replace("attn.o_proj.", "attn.out_proj.")
        # HF's ResNet -> timm's (torchvision's) names
        key = key.replace("embedder.embedder.convolution", "conv1")
        key = key.replace("embedder.embedder.normalization", "bn1")
        stage = re.search(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)", key)
        if stage:
            rest = stage[3].replace("shortcut.convolution", "downsample.0")
            rest = rest.replace("shortcut.normalization", "downsample.1")
            conv = re.match(r"layer\.(\d+)\.(convolution|normalization)\.(.*)", rest)
            if conv:
                part = "conv" if conv[2] == "convolution" else "bn"
                rest = f"{part}{int(conv[1]) + 1}.{conv[3]}"
            key = key[: stage.start()] + f"layer{int(stage[1]) + 1}.{stage[2]}.{rest}"
        renamed[key] = value
    target.mkdir()
    save_file(renamed, target / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config.pop("backbone_config")
    config.update(backbone="resnet18", use_timm_backbone=True, use_pretrained_backbone=True)
    (target / "config.json").write_text(json.dumps(config))
    return renamed


@pytest.mark.parametrize("kind", ["deformable_detr", "detr"])
def test_the_hubs_layout_gives_the_same_model(tmp_path, kind):
    folder, _, _ = _saved(tmp_path, kind)
    hub = tmp_path / "hub"
    renamed = _hub_layout(folder, hub)
    assert "model.backbone.conv_encoder.model.layer1.0.conv1.weight" in renamed
    assert any(".fc1." in k and ".mlp." not in k for k in renamed)
    saved, from_hub = read_source(folder), read_source(hub)
    assert from_hub.config == saved.config and from_hub.label_map == saved.label_map
    assert saved.state_dict.keys() == from_hub.state_dict.keys()
    for key, value in saved.state_dict.items():
        assert torch.equal(value, from_hub.state_dict[key]), key
    assert from_hub.augmentation.val_scale == 800  # no preprocessor file: HF's default


def test_a_folder_of_another_kind_is_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty has no checkpoint.pt"):
        load_model(empty)
    other = tmp_path / "yolos"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "yolos"}))
    save_file({"x": torch.zeros(1)}, other / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model_type 'yolos' is not one detr-ray runs"):
        load_model(other)
    (other / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"yolos has config.json but no weights"):
        load_model(other)
