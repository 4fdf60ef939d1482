"""The PFCVR model: shapes, dtypes, gradient routing, branch skipping, masking, overfitting,
and the real-checkpoint backbone path (a tiny CLIP saved to a temporary folder)."""
from __future__ import annotations

import pytest
import torch

from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.model import build_model, build_tokenizer
from pfcvr.model.masking import corrupt_captions, ordinary_ids, patch_mask, removed_count
from pfcvr.model.pfcvr import patchify
from tests.support.model_helpers import (CAPTIONS, FULL, KW, model_cfg, random_batch, save_tiny_clip,
                                 small_model, train_forward, weights)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are tiny: threads only add overhead on the shared CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
GROUPS = ("vision", "text", "classifier", "part", "mlm", "mim")


@pytest.fixture(scope="module")
def model():
    return small_model()


def _grad_groups(model) -> dict[str, tuple[int, int, int]]:
    """(params in the graph, params with a non-zero gradient, params) per module group."""
    mods = {"vision": [model.backbone.vision, model.backbone.visual_projection],
            "text": [model.backbone.text, model.backbone.text_projection],
            "classifier": [model.classifier], "part": [model.part], "mlm": [model.mlm],
            "mim": [model.mim]}
    out = {}
    for name, ms in mods.items():
        ps = [p for m in ms for p in m.parameters()]
        out[name] = (sum(p.grad is not None for p in ps),
                     sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in ps), len(ps))
    return out


# ------------------------------------------------------------------------------------ outputs
def test_forward_returns_the_named_finite_float32_losses(model):
    out = train_forward(model, random_batch(model), FULL)
    assert set(out) == {"loss", "sdm", "id", "mlm", "mim", "part", "mlm_acc"}
    for name, value in out.items():
        assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value), name
    want = sum(getattr(FULL, k) * out[k] for k in ("sdm", "id", "mlm", "mim", "part"))
    assert torch.allclose(out["loss"], want)
    assert 0.0 <= out["mlm_acc"].item() <= 1.0


def test_forward_returns_the_unweighted_terms_it_was_asked_for(model):
    from pfcvr.losses import Criterion
    from pfcvr.model import PFCVROutput

    batch = random_batch(model)
    torch.manual_seed(0)
    out = model(batch, terms={"part", "sdm"}, **KW)
    assert isinstance(out, PFCVROutput)
    assert out.id is None and out.mlm is None and out.mim is None and out.mlm_acc is None
    assert list(out.terms()) == ["sdm", "part"]                  # TERMS order, not call order
    # unweighted: the criterion multiplies once, the model never does
    total = Criterion(weights(sdm=2.0, part=0.5))(out)
    assert torch.equal(total, 2.0 * out.sdm + 0.5 * out.part)
    every = model(batch, **KW)                                     # default: all five branches
    assert list(every.terms()) == ["sdm", "id", "mlm", "mim", "part"]
    assert every.mlm_acc is not None and every.mlm_acc.requires_grad is False
    for bad in (set(), {"sdm", "itc"}):
        with pytest.raises(ValueError, match="must be a non-empty subset of sdm, id, mlm, mim"):
            model(batch, terms=bad, **KW)


def test_encoders_and_part_outputs_have_the_contract_shapes(model):
    batch = random_batch(model, batch_size=3)
    model.eval()
    with torch.no_grad():
        t = model.encode_text(batch["caption_ids"])
        i = model.encode_image(batch["images"])
        q = model.text_part_queries(batch["caption_ids"])
        v = model.image_part_features(batch["images"], batch["part_masks"])
    model.train()
    d = model.embed_dim
    assert t.shape == (3, d) and i.shape == (3, d) and t.dtype == i.dtype == torch.float32
    assert q.shape == (3, len(PART_CATEGORIES), d) and v.shape == q.shape
    assert model.grid_size == 4 and model.image_size == 32
    assert batch["part_masks"].shape[-1] == model.grid_size ** 2


def test_global_text_feature_is_the_eot_token(model):
    ids = model.tokenizer(CAPTIONS[:2])
    model.eval()
    with torch.no_grad():
        tokens = model.backbone.encode_text_tokens(ids)
        eot = (ids == model.tokenizer.eot_id).int().argmax(1)
        assert torch.equal(model.encode_text(ids), tokens[torch.arange(2), eot])
        # Causal text encoder: what follows EOT cannot change the global feature.
        other = ids.clone()
        other[0, eot[0] + 1:] = 7
        assert torch.allclose(model.encode_text(other)[0], model.encode_text(ids)[0], atol=1e-6)
    model.train()


def test_bf16_autocast_runs_every_branch(model):
    batch = random_batch(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = train_forward(model, batch, FULL)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in out.values())
    out["loss"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("branch, reached", [
    ("sdm", {"vision", "text"}),
    ("id", {"vision", "text", "classifier"}),
    ("part", {"vision", "text", "part"}),
    ("mlm", {"vision", "text", "mlm"}),
    ("mim", {"vision", "text", "mim"}),
])
def test_each_loss_reaches_exactly_its_modules(branch, reached):
    m = small_model()
    out = train_forward(m, random_batch(m), weights(**{branch: 1.0}))
    assert set(out) - {"mlm_acc"} == {"loss", branch}
    out["loss"].backward()
    got = _grad_groups(m)
    for group in GROUPS:
        n_graph, n_grad, n = got[group]
        if group in reached and group in ("classifier", "part", "mlm", "mim"):
            assert n_graph == n, f"{branch}: only {n_graph}/{n} {group} params are used"
            zero = {name for name, p in getattr(m, group).named_parameters()
                    if not p.grad.abs().sum() > 0}
            # DETR: the first decoder layer's self-attention sees the all-zero initial target,
            # so it outputs its (zero-initialised) value bias whatever its weights: no gradient.
            allowed = ({"layers.0.self_attn.in_proj_weight", "layers.0.self_attn.out_proj.weight"}
                       if group == "part" else set())
            assert zero <= allowed, f"{branch}: {sorted(zero - allowed)} got no gradient"
        elif group in reached:
            assert n_grad > 0, f"{branch}: no gradient reached the {group} tower"
        else:
            assert n_graph == 0, f"{branch}: {n_graph} {group} params got a gradient"


def test_zero_weight_skips_the_branch_compute():
    m = small_model()
    calls = {name: 0 for name in ("part", "mlm", "mim", "classifier", "text")}
    for name in ("part", "mlm", "mim", "classifier"):
        getattr(m, name).register_forward_pre_hook(
            lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    m.part.decode = (lambda f: lambda *a, **k: (calls.__setitem__("part", calls["part"] + 1),
                                                f(*a, **k))[1])(m.part.decode)
    rows = []

    def count_text(_, args):
        calls["text"] += 1
        rows.append(args[0].shape[0])

    m.backbone.text.final_layer_norm.register_forward_pre_hook(count_text)
    train_forward(m, random_batch(m, batch_size=4), weights(sdm=1.0))
    assert calls == {"part": 0, "mlm": 0, "mim": 0, "classifier": 0, "text": 1} and rows == [4]
    train_forward(m, random_batch(m, batch_size=4), FULL)
    # one text pass over 4 captions + 4 corrupted captions + the 6 part prompts
    assert calls["text"] == 2 and rows[1] == 4 + 4 + 6
    assert calls["mlm"] == calls["mim"] == calls["classifier"] == calls["part"] == 1
    train_forward(m, random_batch(m, batch_size=4), weights(sdm=1.0, part=0.2))
    assert rows[2] == 4 + 6


def test_one_text_pass_equals_separate_passes(model):
    ids = model.tokenizer(CAPTIONS[:3])
    with torch.no_grad():
        joint = model.backbone.encode_text_tokens(torch.cat([ids, model.part_prompt_ids]))
        assert torch.allclose(joint[:3], model.backbone.encode_text_tokens(ids), atol=1e-5)
        assert torch.allclose(joint[3:].mean(1), model.part_prompt_features(), atol=1e-5)


def test_all_zero_weights_and_missing_classifier_are_errors():
    m = small_model(num_classes=0)
    assert m.classifier is None
    batch = random_batch(m)
    with pytest.raises(ValueError, match="every loss weight is zero"):
        train_forward(m, batch, weights())
    with pytest.raises(ValueError, match="num_classes=0"):
        train_forward(m, batch, weights(id=0.5))
    assert set(train_forward(m, batch, weights(sdm=1.0, mim=0.5))) == {"loss", "sdm", "mim"}
    with pytest.raises(ValueError, match="train.mim_mask='box'"):
        train_forward(m, batch, weights(mim=1.0), mask_ratio=0.5, mim_mask="box")
    with pytest.raises(ValueError, match="removes no patch"):
        train_forward(m, batch, weights(mim=1.0), mask_ratio=0.0, mim_mask="part")


def test_cls_position_quirk():
    normal, quirk = small_model(), small_model(cls_pos_quirk=True)
    quirk.load_state_dict(normal.state_dict())
    batch = random_batch(normal)
    assert not torch.allclose(normal.encode_image(batch["images"]),
                              quirk.encode_image(batch["images"]))
    for m, row0_used in ((normal, True), (quirk, False)):
        train_forward(m, batch, weights(sdm=1.0))["loss"].backward()
        grad = m.backbone.vision.embeddings.position_embedding.weight.grad
        assert bool(grad[0].abs().sum() > 0) == row0_used


def test_image_context_uses_the_image_global_feature():
    m = small_model(part_context="image")
    batch = random_batch(m)
    out = train_forward(m, batch, weights(part=1.0))
    out["loss"].backward()
    # With image context the caption pass gets no gradient from the part loss; the part prompts
    # (same text tower) still do, through the token embeddings of their own ids only.
    emb = m.backbone.text.embeddings.token_embedding.weight.grad
    caption_only = set(batch["caption_ids"].unique().tolist()) - set(
        m.part_prompt_ids.unique().tolist())
    assert all(emb[i].abs().sum() == 0 for i in caption_only)
    with pytest.raises(ValueError, match="part_context=caption"):
        m.text_part_queries(batch["caption_ids"])


# ------------------------------------------------------------------------------------ masking
@pytest.mark.parametrize("n", [16, 64, 576])
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("mode", ["part", "random"])
def test_exact_number_of_removed_patches(n, ratio, mode):
    g = torch.Generator().manual_seed(n)
    b = 8
    prior = None
    if mode == "part":
        prior = torch.rand(b, n, generator=g) < torch.linspace(0, 1, b).unsqueeze(1)
    keep, removed, mask = patch_mask(b, n, ratio, prior, generator=g)
    r = round(ratio * n)
    assert removed.shape == (b, r) and keep.shape == (b, n - r)
    assert (mask.sum(1) == r).all()
    both = torch.cat([keep, removed], 1).sort(1).values
    assert torch.equal(both, torch.arange(n).expand(b, n))                   # a partition
    assert torch.equal(keep, keep.sort(1).values) and torch.equal(removed, removed.sort(1).values)
    assert torch.equal(mask.gather(1, removed), torch.ones_like(removed, dtype=torch.bool))
    if prior is not None:
        for i in range(b):
            n_prior = int(prior[i].sum())
            in_prior = int(prior[i][removed[i]].sum())
            assert in_prior == min(n_prior, r)                     # prior patches go first


def test_official_default_removes_432_of_576():
    assert removed_count(576, 0.75) == 432


def test_random_patch_mask_is_uniform():
    g = torch.Generator().manual_seed(0)
    _, _, mask = patch_mask(4000, 16, 0.25, None, generator=g)
    freq = mask.float().mean(0)
    assert (freq - 0.25).abs().max() < 0.03


def test_mlm_corruption_statistics():
    g = torch.Generator().manual_seed(0)
    vocab, special = 600, torch.tensor([0, 1, 2, 3])
    ids = torch.randint(4, vocab, (4000, 40), generator=g)
    ids[:, 0], ids[:, 30], ids[:, 31:] = 1, 2, 0          # SOT, 29 words, EOT, padding
    out, sel = corrupt_captions(ids, 0.15, mask_id=3, special_ids=special,
                                ordinary=ordinary_ids(vocab, special), generator=g)
    words = torch.zeros_like(sel)
    words[:, 1:30] = True
    assert not (sel & ~words).any()                                 # never SOT/EOT/pad
    assert torch.equal(out[~words], ids[~words])
    assert sel.any(1).all()                                         # >= 1 per caption
    assert sel[words].float().mean().item() == pytest.approx(0.15, abs=0.005)
    n = sel.sum().item()
    masked = (out[sel] == 3).sum().item() / n
    same = (out[sel] == ids[sel]).sum().item() / n
    other = 1 - masked - same
    assert masked == pytest.approx(0.8, abs=0.01)
    assert same == pytest.approx(0.1, abs=0.01) and other == pytest.approx(0.1, abs=0.01)
    assert not torch.isin(out[sel & (out != 3)], special).any()     # random ids are ordinary
    assert torch.equal(ordinary_ids(vocab, special), torch.arange(4, vocab))


def test_mlm_corruption_forces_one_mask_per_caption():
    ids = torch.tensor([[1, 10, 11, 12, 2, 0], [1, 13, 2, 0, 0, 0], [1, 2, 0, 0, 0, 0]])
    special = torch.tensor([0, 1, 2, 3])
    out, sel = corrupt_captions(ids, 0.0, mask_id=3, special_ids=special,
                                ordinary=ordinary_ids(50, special))
    assert sel.sum(1).tolist() == [1, 1, 0]                         # empty caption: nothing
    assert (out[sel] == 3).all()


def test_patchify_layout():
    img = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).reshape(2, 3, 4, 4)
    p = patchify(img, 2)
    assert p.shape == (2, 4, 12)
    # patch 1 = rows 0-1, cols 2-3; first entry (row 0, col 2) holds R, G, B in order
    assert p[0, 1, :3].tolist() == [img[0, 0, 0, 2].item(), img[0, 1, 0, 2].item(),
                                    img[0, 2, 0, 2].item()]


# ------------------------------------------------------------------------------------ learning
@pytest.mark.parametrize("stem", ["conv", "patch"])
def test_loss_falls_when_overfitting_one_batch(stem):
    m = small_model(seed=3, **{"tiny.stem": stem})
    batch = random_batch(m, batch_size=4, seed=3)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = last = None
    torch.manual_seed(0)
    for _ in range(40):       # the conv stem starts slower: 25 steps halve only the patchify's loss
        out = train_forward(m, batch, FULL)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first or {k: v.item() for k, v in out.items()}
        last = {k: v.item() for k, v in out.items()}
    assert last["loss"] < 0.5 * first["loss"]
    for k in ("sdm", "id", "mlm", "mim", "part"):
        assert last[k] < first[k], k


# ------------------------------------------------------------------------------------ real CLIP
def test_real_checkpoint_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n_vocab = save_tiny_clip(tmp_path / "clip", image_size=32, patch_size=8)
    cfg = model_cfg(backbone=str(tmp_path / "clip"), image_size=48)
    tok = build_tokenizer(cfg, train_captions=[])
    torch.manual_seed(0)
    m = build_model(cfg, 3, tok)
    from transformers import CLIPModel

    ref = CLIPModel.from_pretrained(tmp_path / "clip", local_files_only=True)
    # Position grid 4x4 -> 6x6 (48 px / patch 8), CLS slot kept; vocabulary + <|mask|>.
    pos = m.backbone.vision.embeddings.position_embedding.weight
    ref_pos = ref.vision_model.embeddings.position_embedding.weight
    assert m.grid_size == 6 and pos.shape[0] == 37 and torch.equal(pos[0], ref_pos[0])
    assert pos[1:].mean().item() == pytest.approx(ref_pos[1:].mean().item(), abs=0.02)
    emb = m.backbone.text.embeddings.token_embedding.weight
    assert emb.shape[0] == n_vocab + 1 and tok.mask_id == n_vocab
    assert torch.equal(emb[:n_vocab], ref.text_model.embeddings.token_embedding.weight)
    assert m.embed_dim == 24
    # The joint features use the checkpoint's projections.
    ids = tok(["a red car"])
    with torch.no_grad():
        ref_feat = ref.get_text_features(input_ids=ids[:, :5]).pooler_output
        m.eval()
        assert torch.allclose(m.encode_text(ids), ref_feat, atol=1e-5)
    m.train()
    # EOT found by id although the mask id is larger; training works on every branch.
    ids = tok(["a red car"])
    ids[0, 2] = tok.mask_id
    assert (ids == tok.eot_id).int().argmax(1).item() == 4 and ids.argmax(1).item() == 2
    batch = random_batch(m, batch_size=4, num_classes=3)
    out = train_forward(m, batch, FULL)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()


def test_unknown_backbone_folder_is_a_clear_error(tmp_path):
    cfg = model_cfg(backbone=str(tmp_path))          # exists, but holds no checkpoint
    with pytest.raises(OSError, match="model.backbone=.*no config.json"):
        build_tokenizer(cfg, [])
    with pytest.raises(OSError, match="model.backbone=.*no config.json"):
        build_model(cfg, 2, small_model().tokenizer)


def test_heads_must_divide_the_joint_width():
    with pytest.raises(ValueError, match=r"model.mlm_decoder.heads=3 does not divide .* 32"):
        small_model(**{"mlm_decoder.heads": 3})


# ------------------------------------------------------------------------------------ stem
def test_conv_stem_gives_the_patchify_token_grid_and_keeps_each_token_in_its_patch():
    from pfcvr.model.backbone import ConvStem

    torch.manual_seed(0)
    stem = ConvStem(64, 12)
    assert [type(m).__name__ for m in stem] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d"]
    assert [(c.kernel_size, c.stride, c.out_channels) for c in (stem[0], stem[2], stem[4])] == [
        ((2, 2), (2, 2), 16), ((2, 2), (2, 2), 32), ((3, 3), (3, 3), 64)]
    x = torch.randn(2, 3, 96, 96)
    y = stem(x)
    assert y.shape == (2, 64, 8, 8)               # the 12x12 patchify's grid
    x2 = x.clone()
    x2[:, :, 12:24, 36:48] += 1.0                 # change one patch (row 1, column 3) only
    changed = (stem(x2) - y).abs().sum(dim=(0, 1)) > 0
    assert changed.nonzero().tolist() == [[1, 3]]  # kernel = stride: no token sees a neighbour
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvStem(64, 6)


def test_conv_stem_model_encodes_with_the_same_token_shapes():
    from pfcvr.model.backbone import ConvStem

    m = small_model(**{"tiny.stem": "conv"})
    assert isinstance(m.backbone.vision.embeddings.patch_embedding, ConvStem)
    assert m.backbone.clip_config["vision_config"]["pfcvr_stem"] == "conv"
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert m.backbone.encode_image_tokens(images).shape == (3, 1 + 4 * 4, 32)


def test_patch_stem_reproduces_the_tower_before_the_stem_existed():
    """`model.tiny.stem: patch` builds exactly the tiny CLIP of the code before the stem (values
    measured on that code: seed 0, the default model section, a fixed ramp image)."""
    import types

    from transformers import CLIPModel

    from pfcvr.config import load_params
    from pfcvr.model.backbone import CLIPBackbone, install_stem, tiny_clip_config

    m = load_params().model
    m = m.model_copy(update={"tiny": m.tiny.model_copy(update={"stem": "patch"})})
    tok = types.SimpleNamespace(vocab_size=1024, pad_id=0, sot_id=1, eot_id=2)
    torch.manual_seed(0)
    clip = install_stem(CLIPModel(tiny_clip_config(m, tok)))
    sd = clip.state_dict()
    assert (len(sd), sum(v.numel() for v in sd.values())) == (78, 309_505)
    assert float(sum(v.double().abs().sum() for v in sd.values())) == pytest.approx(
        15155.622014745713, rel=1e-9)
    x = torch.linspace(-1, 1, 3 * 96 * 96).reshape(1, 3, 96, 96)
    with torch.no_grad():
        out = CLIPBackbone(clip).encode_image_tokens(x)
    assert float(out.double().sum()) == pytest.approx(288.13864151186135, rel=1e-4)
