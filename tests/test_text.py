"""Text-to-image: the text encoder, its contrastive training, and a model conditioned on prompts."""

import os

import keras
import numpy as np
import pytest

from conftest import in_process_error, one_line_error, run_script, tiny_model
from diffusion_keras import DiffusionModel
from diffusion_keras.data.captions import flower_caption
from diffusion_keras.models.saving import load_model, load_text_encoder
from diffusion_keras.models.text import TextEncoder, build_vocabulary, words_of
from diffusion_keras.nn.unet import build_unet
from diffusion_keras.training.clip import ContrastivePretrainer, train_text_encoder

CAPTIONS = ["a red flower", "a blue flower", "a green flower", "a purple flower"]
TINY_TEXT = dict(image_size=16, widths=(8, 16), block_depth=1, embedding_dims=8,
                 attention_levels=(1,), attention_heads=2, seed=1)  # fmt: skip


def tiny_encoder(captions=CAPTIONS, seed=1):
    return TextEncoder(build_vocabulary(captions), sequence_length=6, dims=16, depth=1, heads=2,
                       seed=seed)  # fmt: skip


def colour_images(count, size=16, seed=0):
    """Noisy images tinted by CAPTIONS' colours, with their captions."""
    tints = np.array([[0.9, 0.1, 0.1], [0.1, 0.1, 0.9], [0.1, 0.8, 0.1], [0.6, 0.1, 0.7]])
    rng = np.random.default_rng(seed)
    index = np.arange(count) % len(CAPTIONS)
    images = tints[index][:, None, None, :] + rng.normal(0, 0.05, (count, size, size, 3))
    return np.clip(images, 0, 1).astype(np.float32), [CAPTIONS[i] for i in index]


def text_model(encoder=None, **overrides):
    model = DiffusionModel(**{**TINY_TEXT, **overrides}, text_encoder=encoder or tiny_encoder())
    model.adapt(colour_images(8)[0])
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4))
    return model


# -- the tokenizer and the encoder -------------------------------------------


def test_the_vocabulary_is_ranked_by_frequency_then_alphabet():
    assert build_vocabulary(["b a", "a c!", "C"]) == ["a", "c", "b"]
    assert build_vocabulary(["b a", "a c!", "C"], max_words=1) == ["a"]


def test_the_tokenizer_reads_words_as_the_vocabulary_does():
    captions = [flower_caption(i) for i in range(50)] + ["It's a RED, red flower (really)!"]
    encoder = TextEncoder(build_vocabulary(captions), sequence_length=24, dims=8, depth=1, heads=2)
    tokens = encoder.tokenize(captions)
    assert tokens.shape == (len(captions), 24) and tokens.dtype == np.int32
    assert (tokens != 1).all(), "a word of the vocabulary was read as unknown"
    assert [len(words_of(c)) for c in captions] == list((tokens > 0).sum(axis=1))
    assert (encoder.tokenize("") == 0).all()
    assert encoder.tokenize("a zebra")[0, 1] == 1  # unknown words share id 1


def test_the_encoder_gives_one_embedding_per_position_and_saves(tmp_path):
    encoder = tiny_encoder()
    tokens = encoder.tokenize(CAPTIONS)
    embeddings = keras.ops.convert_to_numpy(encoder(tokens))
    assert embeddings.shape == (4, 7, 16) and encoder.context_shape == (7, 16)
    path = str(tmp_path / "text_encoder.keras")
    encoder.save(path)
    loaded = load_text_encoder(path)
    assert loaded.vocabulary == encoder.vocabulary
    np.testing.assert_array_equal(loaded.tokenize(CAPTIONS), tokens)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(tokens)), embeddings, atol=1e-6)


def test_padding_is_masked_out():
    encoder = tiny_encoder()
    short = encoder.tokenize("a red flower")
    # Changing what the padding positions embed to changes nothing.
    before = keras.ops.convert_to_numpy(encoder(short))[:, :4]
    table = encoder.token_embedding.embeddings
    table.assign(np.concatenate([np.full((1, 16), 9.0, np.float32), np.asarray(table)[1:]]))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(encoder(short))[:, :4], before, atol=1e-5
    )


def test_bad_encoder_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="different, non-empty words"):
        TextEncoder(["a", "a"])
    with pytest.raises(ValueError, match="multiple of heads"):
        TextEncoder(["a"], dims=10, heads=4)


# -- contrastive training ----------------------------------------------------


@pytest.mark.slow
def test_contrastive_training_learns_to_match_captions_and_images():
    images, captions = colour_images(128)
    uint8 = np.round(images * 255).astype(np.uint8)
    keras.utils.set_random_seed(0)
    encoder, pretrainer = train_text_encoder(
        uint8, captions, epochs=6, batch_size=32, seed=0, sequence_length=6, dims=16, depth=1,
        heads=2, verbose=0,
    )  # fmt: skip
    history = pretrainer.history.history["loss"]
    assert history[-1] < history[0] * 0.7, history
    # One image of each colour: every caption finds its own.
    held, held_captions = colour_images(4, seed=5)
    assert pretrainer.retrieval_accuracy(held, held_captions) == 1.0
    assert isinstance(encoder, TextEncoder) and isinstance(pretrainer, ContrastivePretrainer)


# -- the text-conditional model ------------------------------------------------


def test_the_u_net_takes_a_context_only_with_attention_and_without_classes():
    with pytest.raises(ValueError, match="attention levels"):
        build_unet(16, widths=(8, 16), block_depth=1, embedding_dims=8, context_shape=(7, 16))
    with pytest.raises(ValueError, match="classes or a context"):
        build_unet(16, widths=(8, 16), block_depth=1, embedding_dims=8, num_classes=2,
                   attention_levels=(1,), context_shape=(7, 16))  # fmt: skip
    with pytest.raises(ValueError, match="attention"):
        DiffusionModel(**{**TINY_TEXT, "attention_levels": ()}, text_encoder=tiny_encoder())


@pytest.mark.slow
def test_the_text_encoder_is_frozen_and_saved_with_the_model(tmp_path):
    model = text_model()
    assert len(model.trainable_weights) == len(model.network.trainable_weights)
    images, captions = colour_images(16)
    before = [w.copy() for w in model.text_encoder.get_weights()]
    tokens = model.text_encoder.tokenize(captions)
    model.fit(images, tokens, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.text_encoder.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = load_model(path)
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for prompt, scale in (("a red flower", 1.0), ("a blue flower", 3.0)):
        np.testing.assert_array_equal(
            loaded.generate(3, 3, seed=4, prompts=prompt, guidance_scale=scale),
            model.generate(3, 3, seed=4, prompts=prompt, guidance_scale=scale),
        )


@pytest.mark.slow
def test_a_jointly_trained_text_encoder_learns_samples_with_its_ema_and_reloads(tmp_path):
    encoder = tiny_encoder()
    users = [w.copy() for w in encoder.get_weights()]
    model = text_model(encoder, train_text_encoder=True)
    own = len(model.network.trainable_weights) + len(model.text_encoder.trainable_weights)
    assert len(model.trainable_weights) == own
    images, captions = colour_images(16)
    model.fit(images, model.text_encoder.tokenize(captions), batch_size=8, epochs=1, verbose=0,
              shuffle=False)  # fmt: skip
    trained, ema = model.text_encoder.get_weights(), model.ema_text_encoder.get_weights()
    assert any(np.abs(t - u).max() > 1e-6 for t, u in zip(trained, users))
    # The EMA copy follows it part of the way (warm-up decay (1+n)/(10+n)).
    assert any(np.abs(e - u).max() > 1e-7 and np.abs(e - t).max() > 1e-7
               for e, t, u in zip(ema, trained, users))  # fmt: skip
    for a, b in zip(encoder.get_weights(), users):  # the user's encoder is theirs
        np.testing.assert_array_equal(a, b)
    # Sampling cross-attends to the EMA encoder's embeddings, not the trained one's.
    with_ema = model.generate(2, 3, seed=4, prompts="a red flower", guidance_scale=2.0)
    model.ema_text_encoder.set_weights(trained)
    assert np.abs(model.generate(2, 3, seed=4, prompts="a red flower", guidance_scale=2.0)
                  - with_ema).max() > 1e-6  # fmt: skip
    model.ema_text_encoder.set_weights(ema)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = load_model(path)
    assert loaded.train_text_encoder
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(loaded.ema_text_encoder.get_weights(), ema):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        loaded.generate(2, 3, seed=4, prompts="a red flower", guidance_scale=2.0), with_ema
    )
    with pytest.raises(ValueError, match="train_text_encoder needs a text_encoder"):
        DiffusionModel(image_size=16, widths=(8, 16), block_depth=1, train_text_encoder=True)


@pytest.mark.slow
def test_guidance_with_the_empty_prompt_is_the_unconditional_pass():
    model = text_model()
    images, captions = colour_images(16)
    model.fit(images, model.text_encoder.tokenize(captions), batch_size=8, epochs=1, verbose=0)
    unconditional = model.generate(3, 3, seed=2)
    for scale in (0.0, 1.0, 4.0):
        np.testing.assert_allclose(
            model.generate(3, 3, seed=2, prompts="", guidance_scale=scale), unconditional,
            atol=1e-5,
        )  # fmt: skip
    # Scale 0 is the unconditional model whatever the prompt; a prompt matters at 1.
    np.testing.assert_allclose(
        model.generate(3, 3, seed=2, prompts="a red flower", guidance_scale=0.0), unconditional,
        atol=1e-5,
    )  # fmt: skip
    red = model.generate(3, 3, seed=2, prompts="a red flower", guidance_scale=3.0)
    assert np.abs(red - unconditional).max() > 1e-3
    negative = model.generate(3, 3, seed=2, prompts="a red flower", guidance_scale=3.0,
                              negative_prompts="a blue flower")  # fmt: skip
    assert np.abs(negative - red).max() > 1e-3


@pytest.mark.slow
def test_cross_attention_maps_say_where_each_token_is_looked_for():
    from diffusion_keras.nn.attention import cross_attention_maps

    model = text_model()
    images, captions = colour_images(16)
    model.fit(images, model.text_encoder.tokenize(captions), batch_size=8, epochs=1, verbose=0)
    noisy = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    rates = np.full((2, 1, 1, 1), 0.8, "float32")
    maps = cross_attention_maps(model, ["a red flower", "a blue flower"], noisy, rates)
    # One cross-attention block (level 1 of widths 8, 16: the middle, 8x8), over the
    # start token, the words and the padding (sequence length 6).
    assert len(maps) == 1 and maps[0][1].shape == (2, 8, 8, 7)
    np.testing.assert_allclose(maps[0][1].sum(axis=-1), 1.0, atol=1e-5)
    alone = cross_attention_maps(model, "a red flower", noisy[:1], rates[:1])[0][1]
    np.testing.assert_allclose(alone[0], maps[0][1][0], atol=1e-5)  # per image
    assert np.abs(maps[0][1][0] - maps[0][1][1]).max() > 1e-4  # the prompt matters
    with pytest.raises(ValueError, match="need a text-conditional model"):
        cross_attention_maps(tiny_model(), "a red flower", noisy, rates)
    with pytest.raises(ValueError, match="got 3 prompts for 2 images"):
        cross_attention_maps(model, ["a", "b", "c"], noisy, rates)


def test_caption_dropout_trains_the_empty_prompt():
    import tensorflow as tf

    model = text_model(label_dropout=0.5)
    tokens = model.text_encoder.tokenize(CAPTIONS * 16)
    seed = model.steps._step_seed(tf.constant(3, "int64"), 0)
    labels = np.asarray(model.steps._training_labels((None, tokens), seed, len(tokens)))
    dropped = (labels == 0).all(axis=1)
    assert 0.25 < dropped.mean() < 0.75
    np.testing.assert_array_equal(labels[~dropped], tokens[~dropped])


def test_prompts_need_a_text_model_and_a_text_model_takes_no_classes():
    with pytest.raises(ValueError, match="text-conditional model"):
        tiny_model().generate(2, 2, seed=0, prompts="a red flower")
    with pytest.raises(ValueError, match="prompts, not classes"):
        text_model().generate(2, 2, seed=0, class_labels=1)
    with pytest.raises(ValueError, match="need a prompt"):
        text_model().generate(2, 2, seed=0, guidance_scale=2.0)
    with pytest.raises(ValueError, match="got 3 prompts for 2 images"):
        text_model().generate(2, 2, seed=0, prompts=["a", "b", "c"])


# -- the command lines ---------------------------------------------------------


@pytest.mark.slow
def test_train_and_generate_from_captions(tmp_path):
    run = str(tmp_path / "run")
    tiny = ["--data", "builtin:flowers:64", "--image-size", "16", "--widths", "8,16",
            "--block-depth", "1", "--attention-levels", "1", "--attention-heads", "2",
            "--batch-size", "32", "--dataset-repetitions", "1", "--epochs", "1"]  # fmt: skip
    result = run_script("train.py", *tiny, "--captions", "--text-encoder-epochs", "1",
                        "--output", run, "--verbose", "0")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "training the text encoder" in result.stdout
    for name in ("model.keras", "text_encoder.keras", "samples/prompts.txt",
                 "samples/epoch_001.png"):  # fmt: skip
        assert os.path.exists(os.path.join(run, name)), name
    out = str(tmp_path / "red.png")
    result = run_script("generate.py", os.path.join(run, "model.keras"), "--prompt",
                        "a red flower with five petals", "--guidance-scale", "3",
                        "--negative-prompt", "blue", "--num-images", "2", "--steps", "2",
                        "--output", out, "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert os.path.exists(out)
    assert not load_model(os.path.join(run, "model.keras")).train_text_encoder
    # A second run reuses the text encoder, and trains it on with the U-Net.
    again = run_script("train.py", *tiny, "--text-encoder", os.path.join(run, "text_encoder.keras"),
                       "--text-encoder-training", "joint", "--output", str(tmp_path / "again"),
                       "--verbose", "0")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "training the text encoder" not in again.stdout
    joint = load_model(str(tmp_path / "again" / "model.keras"))
    assert joint.train_text_encoder and joint.ema_text_encoder is not None


@pytest.mark.slow
def test_caption_flags_fail_in_one_line(tmp_path):
    line = one_line_error(run_script("train.py", "--captions", "--output", str(tmp_path / "r")))
    assert "--attention-levels" in line
    line = one_line_error(
        run_script(
            "train.py",
            "--text-encoder",
            str(tmp_path / "none.keras"),
            "--attention-levels",
            "3",
            "--output",
            str(tmp_path / "r"),
        )  # fmt: skip
    )
    assert "does not exist" in line


@pytest.mark.slow
def test_generate_py_says_in_one_line_what_a_prompt_needs(tmp_path):
    plain, text = str(tmp_path / "plain.keras"), str(tmp_path / "text.keras")
    tiny_model().save(plain)
    text_model().save(text)
    assert "not text-conditional" in in_process_error([plain, "--prompt", "a red flower"])
    assert "needs a --prompt" in in_process_error([text, "--negative-prompt", "blue"])
    line = in_process_error(
        [text, "--prompt", "red", "--negative-prompt", "blue", "--guidance-scale", "1"]
    )
    assert "--guidance-scale" in line


@pytest.mark.slow
def test_generate_py_guides_a_prompt_at_the_measured_scale_unless_told(tmp_path):
    import matplotlib.image

    from diffusion_keras.cli import generate

    text = str(tmp_path / "text.keras")
    model = text_model()
    images, captions = colour_images(16)
    model.fit(images, model.text_encoder.tokenize(captions), batch_size=8, epochs=1, verbose=0)
    model.save(text)

    def image(*flags):
        out = str(tmp_path / f"{len(flags)}{'_'.join(flags)}.png")
        generate.main([text, "--prompt", "a red flower", "--num-images", "2", "--steps", "2",
                       "--seed", "3", "--no-progress", "--output", out, *flags])  # fmt: skip
        return matplotlib.image.imread(out)

    assert generate.PROMPT_GUIDANCE == 5.0
    default = image()
    np.testing.assert_array_equal(default, image("--guidance-scale", "5"))
    assert np.abs(default - image("--guidance-scale", "1")).max() > 0.0
