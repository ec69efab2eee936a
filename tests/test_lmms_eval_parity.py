"""``--protocol lmms-eval`` against lmms-eval 0.7.3's own code (tests/lmms_eval_code.py), item by item:
prompts, subtitle lines, extracted letters and frame indices."""

import importlib.metadata
import json
import random
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
from lmms_eval_code import (api_module, base_names, cli_default, init_defaults, method_names, method_strings,
                             model_method, model_utils_module, registered_class, task_kwargs, task_module)

from tpo.data.frames import read_clip, read_frames, uniform_frame_indices, video_info
from tpo.evaluate import lmms_eval as ours
from tpo.evaluate.benchmarks import LETTERS, MCQItem, load_benchmark
from tpo.evaluate.protocol import Protocol, strip_reasoning
from tpo.models.adapter import time_instruction
from tpo.synthetic.world import random_events, render_frames, write_video

QUESTIONS = [("What is the man holding when he enters the room?",
              ["A red umbrella.", "A blue bicycle.", "Basketball.", "Nothing."]),
             ("Which event happens first?", ["The dog barks", "The car stops", "It rains", "A: the crowd cheers"]),
             ("How many people appear?", ["1", "2", "3", "4", "5"])]
REPLIES = [
    "A", "B.", "(C)", "D) the man", "C. Basketball.", "The answer is B.", "The best answer is: C", "Answer: C",
    "A is correct", "A is the correct answer.", "A because he runs.", "Not B, the answer is A.", "Basketball",
    "Basketball.", "A blue bicycle.", "I think it's D", "Option B", "b", "None of the above.", "", "  ",
    "The correct option is (D).", "Based on the video, B", "B\n\nThe man is running.", "答案是C", "**B**",
    "A. red umbrella, B. blue bicycle", "The best option is D", "E", "I choose C because of the ball.",
    "It could be A or B, but I pick B.", "(A) and (D) are wrong; (C).", "C:", "Best option: (B",
    "The man holds a blue bicycle while entering, which looks heavy and large for the small room here",
]


def test_the_version_matched_is_the_one_installed():
    assert importlib.metadata.version("lmms-eval") == ours.LMMS_EVAL_VERSION


@pytest.mark.parametrize("variant", ours.VARIANTS)
def test_videomme_prompts(variant):
    videomme = task_module("videomme")
    for question, options in QUESTIONS[:2]:
        doc = {"question": question, "options": [f"{'ABCD'[i]}. {o}" for i, o in enumerate(options)]}
        expected = videomme.videomme_doc_to_text(doc, task_kwargs("videomme/videomme.yaml", variant))
        assert ours.videomme_prompt(question, options, variant) == expected


def _srt(cues) -> str:
    stamp = lambda s: f"{int(s // 3600):02d}:{int(s % 3600 // 60):02d}:{int(s % 60):02d},{int(s * 1000 % 1000):03d}"
    return "\n\n".join(f"{i + 1}\n{stamp(a)} --> {stamp(b)}\n{text}" for i, (a, b, text) in enumerate(cues)) + "\n"


@pytest.fixture(scope="module")
def videomme_home(tmp_path_factory):
    """A Hugging Face cache as lmms-eval's videomme task reads it: ``videomme/data/<id>.mp4``,
    ``videomme/subtitle/<id>.srt``: a 48 s video at 8 fps and cues of every kind."""
    home = tmp_path_factory.mktemp("hf_home")
    (home / "videomme" / "data").mkdir(parents=True)
    (home / "videomme" / "subtitle").mkdir()
    frames = render_frames(random_events(random.Random(0), 4), 96, size=32)
    write_video(home / "videomme" / "data" / "v1.mp4", frames, fps=8)
    write_video(home / "videomme" / "data" / "v2.mp4", frames[:100], fps=8)
    font = '<font color="white" size=".72c">{}</font>'
    cues = [(0.5 + 1.7 * i, 1.9 + 1.7 * i, font.format(f"line {i}") if i % 5 else f"untagged {i}") for i in range(26)]
    cues += [(3.0, 4.0, font.format("same time, first")), (3.0, 4.0, font.format("same time, second")),
             (40.0, 47.9, font.format("two") + "\n" + font.format("lines"))]
    (home / "videomme" / "subtitle" / "v1.srt").write_text(_srt(cues), encoding="utf-8")
    return home


@pytest.mark.parametrize("variant", ours.VARIANTS)
def test_videomme_subtitle_lines_and_prompts(videomme_home, monkeypatch, variant):
    monkeypatch.setenv("HF_HOME", str(videomme_home))
    videomme = task_module("videomme")  # reads HF_HOME when it loads
    question, options = QUESTIONS[0]
    for video_id in ("v1", "v2"):  # v2 has no subtitle file
        doc = {"videoID": video_id, "question": question, "options": [f"{'ABCD'[i]}. {o}" for i, o in enumerate(options)]}
        expected = videomme.videomme_doc_to_text_subtitle(doc, task_kwargs("videomme/videomme_w_subtitle.yaml", variant))
        info = video_info(videomme_home / "videomme" / "data" / f"{video_id}.mp4")
        lines = ours.subtitle_lines(videomme_home / "videomme" / "subtitle" / f"{video_id}.srt", info.fps,
                                    info.num_frames, variant)
        assert ours.videomme_subtitle_prompt(question, options, lines, variant) == expected
        assert (lines == "No subtitles available") == (video_id == "v2")


def test_longvideobench_prompts_and_letters(monkeypatch):
    lvb = task_module("longvideobench")
    monkeypatch.setattr(lvb.random, "choice", lambda choices: "guessed")
    for question, options in QUESTIONS:
        doc = {"question": question, "id": "x", "duration_group": 600, "question_category": "T",
               "correct_choice": 0, **{f"option{i}": (options + ["N/A"] * 5)[i] for i in range(5)}}
        assert ours.longvideobench_prompt(question, options) == lvb.longvideobench_doc_to_text(
            doc, task_kwargs("longvideobench/longvideobench_val_v.yaml", "default"))
        for reply in REPLIES:
            expected = lvb.longvideobench_process_results(doc, [reply.strip()])["lvb_acc"]["parsed_pred"]
            assert (ours.longvideobench_letter(reply.strip()) or "guessed") == expected, reply


def test_videomme_and_mlvu_letters():
    videomme, mlvu = task_module("videomme"), task_module("mlvu")
    doc = {"question_id": "q", "duration": "short", "domain": "Knowledge", "sub_category": "Astronomy",
           "task_type": "Counting Problem", "answer": "A", "videoID": "v", "question": "?"}
    for reply in REPLIES:
        read = ours.mcq_letter(reply.strip())
        assert videomme.videomme_process_results(doc, [reply.strip()])["videomme_perception_score"][
            "pred_answer"] == read, reply
        assert mlvu.mlvu_process_results({**doc, "task_type": "count"}, [reply.strip()])["mlvu_percetion_score"][
            "pred_answer"] == read, reply


def test_mlvu_prompt():
    mlvu = task_module("mlvu")
    question, options = QUESTIONS[0]
    doc = {"question": question + "\n" + "\n".join(f"({'ABCD'[i]}) {o}" for i, o in enumerate(options))}
    assert ours.mlvu_prompt(question, options) == mlvu.mlvu_doc_to_text(doc, task_kwargs("mlvu/mlvu_dev.yaml", "default"))


# ---- what the annotation files give, as lmms-eval's tasks pass it -----------------------------------

# spaces around the question and options, labels that are not exactly "X. ", texts that begin like a
# label, an empty option: lmms-eval's doc_to_text passes every one through as the file has it
ODD_QUESTION = "  Who wrote the book shown at the start?  "
ODD_OPTIONS = ["J. K. Rowling", "(B) shape of the moon", "A: the crowd cheers", "", "  spaced out "]


@pytest.mark.parametrize("variant", ours.VARIANTS)
def test_videomme_prompts_keep_the_datasets_texts(tmp_path, variant):
    videomme = task_module("videomme")
    row = {"question_id": "q", "videoID": "v", "question": ODD_QUESTION, "answer": "A",
           "options": ["A.  J. K. Rowling ", "B. (B) shape of the moon", "C.A: the crowd cheers", "D. "]}
    (tmp_path / "videomme.json").write_text(json.dumps([row]))
    loaded = load_benchmark("videomme", tmp_path / "videomme.json")
    assert not loaded.bad
    expected = videomme.videomme_doc_to_text(row, task_kwargs("videomme/videomme.yaml", variant))
    assert Protocol("lmms-eval", "videomme", variant=variant).prompt(loaded.items[0], None) == expected


def test_longvideobench_and_mlvu_prompts_keep_the_files_texts(tmp_path):
    lvb, mlvu = task_module("longvideobench"), task_module("mlvu")
    (tmp_path / "lvb_val.json").write_text(json.dumps([
        {"id": "1", "video_path": "v.mp4", "question": ODD_QUESTION, "candidates": ODD_OPTIONS, "correct_choice": 0,
         "duration_group": 15, "question_category": "TOS"}]))
    (tmp_path / "1_plotQA.json").write_text(json.dumps([
        {"video": "v.mp4", "question": ODD_QUESTION, "candidates": ODD_OPTIONS[:4], "answer": ODD_OPTIONS[0],
         "question_type": "plotQA"}]))
    loaded = load_benchmark("longvideobench", tmp_path / "lvb_val.json")
    assert not loaded.bad and loaded.items[0].options[0] == "J. K. Rowling"
    doc = {"question": ODD_QUESTION, **{f"option{i}": option for i, option in enumerate(ODD_OPTIONS)}}
    expected = lvb.longvideobench_doc_to_text(doc, task_kwargs("longvideobench/longvideobench_val_v.yaml", "default"))
    assert Protocol("lmms-eval", "longvideobench").prompt(loaded.items[0], None) == expected
    loaded = load_benchmark("mlvu", tmp_path / "1_plotQA.json")
    assert not loaded.bad and loaded.items[0].options[:3] == ["J. K. Rowling", "(B) shape of the moon",
                                                              "A: the crowd cheers"]
    doc = {"question": ODD_QUESTION + "\n" + "\n".join(f"({'ABCD'[i]}) {o}" for i, o in enumerate(ODD_OPTIONS[:4]))}
    expected = mlvu.mlvu_doc_to_text(doc, task_kwargs("mlvu/mlvu_dev.yaml", "default"))
    assert Protocol("lmms-eval", "mlvu").prompt(loaded.items[0], None) == expected


def test_mlvu_gold_is_the_candidate_whose_text_is_the_answer(tmp_path):
    """lmms-eval compares with the letter its Hugging Face copy of MLVU-dev stores; the MLVU json files
    give the correct candidate's text, which is matched as text (MLVU's ``qa_template``: the candidate
    equal to ``answer``), never read as a letter."""
    (tmp_path / "3_count.json").write_text(json.dumps([
        {"video": "v.mp4", "question": "Which?", "candidates": ["B", "A", "C", "D"], "answer": "A",
         "question_type": "count"},
        {"video": "w.mp4", "question": "Which?", "candidates": ["x", "y"], "answer": "B", "question_type": "count"}]))
    loaded = load_benchmark("mlvu", tmp_path / "3_count.json")
    assert [item.answer for item in loaded.items] == [1]
    assert [b.item for b in loaded.bad] == ["1"] and "no candidate is 'B'" in loaded.bad[0].reason


# ---- reasoning blocks -------------------------------------------------------------------------------

def _tagged_replies(count: int = 4000) -> list[str]:
    pieces = ["<think>", "</think>", "<analysis>", "</analysis>", "A", " (B) ", "The answer is C.", "\n", "maybe D",
              " "]
    rng = random.Random(33)
    made = ["<think>x</think>B<think>y", "</think>A<think>", "<think>a<think>b</think>C</think>D",
            "<analysis><think>A</analysis>B</think>C", "</analysis>A</think>B", "<think>B"]
    return made + ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 9))) for _ in range(count)]


def test_reasoning_blocks_are_stripped_as_lmms_eval_strips_them():
    """lmms-eval's evaluator runs every reply through ``api/reasoning.py``'s ``strip_reasoning_tags``
    with the CLI's default ``--reasoning_tags`` before ``process_results``."""
    strip = api_module("reasoning").strip_reasoning_tags
    tags = json.loads(cli_default("--reasoning_tags"))
    videomme = task_module("videomme")
    doc = {"question_id": "q", "duration": "short", "domain": "Knowledge", "sub_category": "Astronomy",
           "task_type": "Counting Problem", "answer": "A", "videoID": "v", "question": "?"}
    item, protocol = MCQItem("q", None, "?", ["a", "b", "c", "d"], 0), Protocol("lmms-eval", "videomme")
    for reply in _tagged_replies():
        assert strip_reasoning(reply) == strip(reply, tags), reply
        expected = videomme.videomme_process_results(doc, [strip(reply, tags)])["videomme_perception_score"]
        choice = protocol.read(reply, item).choice
        assert ("" if choice is None else LETTERS[choice]) == expected["pred_answer"], reply


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Videos of 37, 300 and 1,201 frames (8 fps): shorter than, and many times, the frame counts."""
    root = tmp_path_factory.mktemp("frames")
    frames = render_frames(random_events(random.Random(1), 4), 320, size=32)
    paths = []
    for n in (37, 300, 1201):
        paths.append(root / f"v{n}.mp4")
        write_video(paths[-1], frames[:n], fps=8)
    return paths


@pytest.mark.parametrize("count", [8, 32, 64])
def test_llava_frames_and_time_instruction(videos, count):
    decord = pytest.importorskip("decord", reason="lmms-eval's LLaVA classes read videos with decord (x86_64 only)")
    VideoReader, cpu = decord.VideoReader, decord.cpu

    load = model_method("simple/llava_vid.py", "LlavaVid", "load_video", np=np, VideoReader=VideoReader, cpu=cpu)
    longva = model_method("simple/longva.py", "LongVA", "load_video", np=np, VideoReader=VideoReader, cpu=cpu)
    for path in videos:
        total = video_info(path).num_frames
        indices = ours.llava_frames(total, count)
        frames, frame_time, video_time = load(None, str(path), count, 1, force_sample=True)
        assert np.array_equal(frames, read_frames(path, indices)) and np.array_equal(longva(None, str(path), count), frames)
        assert indices[0] == 0 and indices[-1] == total - 1
        assert indices != uniform_frame_indices(total, count)  # not the segment centres of --protocol tpo
        theirs = (f"The video lasts for {video_time:.2f} seconds, and {len(frames)} frames are uniformly sampled "
                  f"from it. These frames are located at {frame_time}.Please answer the following questions "
                  f"related to this video.")
        assert time_instruction(read_clip(path, indices)) == theirs


@pytest.mark.parametrize("count", [8, 32, 64])
def test_qwen_frames(videos, monkeypatch, count):
    from qwen_vl_utils.vision_process import fetch_video

    monkeypatch.setenv("FORCE_QWENVL_VIDEO_READER", "decord")
    for path in videos:
        info = video_info(path)
        nframes = max(2, min(count, info.num_frames) // 2 * 2)  # lmms-eval's qwen2_5_vl chat class
        _, metadata = fetch_video({"type": "video", "video": str(path), "nframes": nframes}, return_video_metadata=True)
        assert list(metadata["frames_indices"]) == ours.qwen_frames(info.num_frames, count)
        _, at_2fps = fetch_video({"type": "video", "video": str(path)}, return_video_metadata=True)  # qwen2_vl's call
        keep = np.unique(np.linspace(0, len(at_2fps["frames_indices"]) - 1, count, dtype=int))
        assert [int(at_2fps["frames_indices"][i]) for i in keep] == ours.qwen2_vl_frames(info.num_frames, info.fps, count)


@pytest.mark.parametrize("count", [7, 9, 11, 15, 32, 64])
def test_qwen3_vl_frames(videos, monkeypatch, count):
    """``qwen3_vl`` (chat) sends qwen_vl_utils ``nframes=max_num_frames`` uncapped: it rounds ``k / 2``
    half to even (8 for 7, 8 for 9, 12 for 11, 16 for 15) and refuses a count above the video's
    frames, where tpo shows them all, rounded down to even (a documented difference)."""
    from qwen_vl_utils.vision_process import fetch_video, smart_nframes

    monkeypatch.setenv("FORCE_QWENVL_VIDEO_READER", "decord")
    assert registered_class("qwen3_vl") == ("chat/qwen3_vl.py", "Qwen3_VL")
    assert "_build_video_kwargs" not in method_names("chat/qwen3_vl.py", "Qwen3_VL")
    settings = {**init_defaults("simple/qwen3_vl.py", "Qwen3_VL"), "max_num_frames": count}
    video_kwargs = model_method("simple/qwen3_vl.py", "Qwen3_VL", "_build_video_kwargs")(SimpleNamespace(**settings))
    assert video_kwargs["nframes"] == count
    rule = ours.FRAME_RULES["qwen3_vl"]
    for path in videos:
        info = video_info(path)
        indices = ours.frame_indices(rule, info.num_frames, info.fps, count)
        element = {"type": "video", "video": str(path), **video_kwargs}
        if round(count / 2) * 2 > info.num_frames:  # (each of qwen_vl_utils' readers asks smart_nframes)
            with pytest.raises(ValueError, match="nframes should in interval"):
                smart_nframes(element, total_frames=info.num_frames, video_fps=info.fps)
            assert len(indices) == info.num_frames // 2 * 2 and indices == ours.qwen_frames(info.num_frames, count)
            continue
        _, metadata = fetch_video(element, image_patch_size=16, return_video_metadata=True)
        assert [int(i) for i in metadata["frames_indices"]] == indices


# ---- the families whose lmms-eval classes have a rule of their own ---------------------------------

COUNTS = [8, 32, 64]  # 64 is more than the 37-frame video has
# tpo family -> the lmms-eval --model name a user of its checkpoints runs, and the class that runs
CLASSES = {"glm4v": ("glm4v", ("simple/glm4v.py", "GLM4V")), "gemma4": ("gemma4", ("simple/gemma4.py", "Gemma4")),
           "qwen3_5": ("qwen3_5", ("chat/qwen3_5.py", "Qwen3_5")),
           "internvl": ("internvl_hf", ("chat/internvl_hf.py", "InternVLHf")),
           "longva": ("longva", ("simple/longva.py", "LongVA"))}


@pytest.mark.parametrize("family", sorted(CLASSES))
def test_the_classes_the_model_names_run(family):
    model_name, expected = CLASSES[family]
    assert registered_class(model_name) == expected
    assert ours.FRAME_RULES[family] in ours.RULES


def _load_sampled(path, sample):
    """transformers' own video loader, sampling with ``sample`` (as a video processor does)."""
    from transformers.video_utils import load_video

    frames, metadata = load_video(str(path), backend="pyav", sample_indices_fn=sample)
    return frames, [int(i) for i in metadata.frames_indices]


@pytest.mark.parametrize("count", COUNTS)
def test_gemma4_frames(videos, count):
    """``Gemma4`` replaces its video processor's ``sample_frames`` with its own and asks for
    ``max_num_frames``."""
    sample = model_method("simple/gemma4.py", "Gemma4", "_sample_video_frames", np=np)
    model = SimpleNamespace(max_num_frames=count)
    for path in videos:
        frames, indices = _load_sampled(path, partial(sample, model, num_frames=count))
        assert indices == ours.capped_llava_frames(video_info(path).num_frames, count)
        assert np.array_equal(frames, read_frames(path, indices))


@pytest.mark.parametrize("count", COUNTS)
def test_internvl_frames(videos, count):
    """``internvl_hf`` leaves frames to transformers' InternVL video processor with ``num_frames``."""
    from transformers import InternVLVideoProcessor

    defaults = init_defaults("chat/internvl_hf.py", "InternVLHf")
    assert defaults["num_frames"] == 32 and defaults["fps"] is None  # frames by count, not by rate
    processor = InternVLVideoProcessor()
    for path in videos:
        total = video_info(path).num_frames
        if count > total:
            with pytest.raises(ValueError, match="exceeds"):
                _load_sampled(path, partial(processor.sample_frames, num_frames=count))
            assert ours.segment_centre_frames(total, count) == list(range(total))
            continue
        frames, indices = _load_sampled(path, partial(processor.sample_frames, num_frames=count))
        assert indices == ours.segment_centre_frames(total, count) == uniform_frame_indices(total, count)
        assert np.array_equal(frames, read_frames(path, indices))


@pytest.mark.parametrize("count", COUNTS)
def test_qwen3_5_frames(videos, count):
    """``qwen3_5`` (chat) builds its video settings with ``Qwen3_VL._build_video_kwargs`` from
    ``Qwen3_5``'s defaults; its ``total_pixels`` sends qwen_vl_utils down the 2 fps path."""
    from qwen_vl_utils.vision_process import fetch_video

    assert base_names("chat/qwen3_5.py", "Qwen3_5") == ["Qwen3_VL_Chat", "Qwen3_5_Simple"]
    overridden = method_names("chat/qwen3_5.py", "Qwen3_5") | method_names("chat/qwen3_vl.py", "Qwen3_VL")
    assert not overridden & {"__init__", "_build_video_kwargs"}
    settings = {**init_defaults("simple/qwen3_vl.py", "Qwen3_VL"), **init_defaults("simple/qwen3_5.py", "Qwen3_5"),
                "max_num_frames": count}
    video_kwargs = model_method("simple/qwen3_vl.py", "Qwen3_VL", "_build_video_kwargs")(SimpleNamespace(**settings))
    assert video_kwargs["max_frames"] == count and "nframes" not in video_kwargs
    for path in videos:
        info = video_info(path)
        _, metadata = fetch_video({"type": "video", "video": str(path), **video_kwargs}, image_patch_size=16,
                                  return_video_metadata=True)
        assert [int(i) for i in metadata["frames_indices"]] == ours.qwen_fps_frames(info.num_frames, info.fps, count)


@pytest.mark.parametrize("count", COUNTS)
def test_longva_default_reader(videos, monkeypatch, count):
    """``LongVA`` reads with PyAV unless ``video_decode_backend=decord`` (``LongVA.load_video``, above)."""
    monkeypatch.delenv("LMMS_VIDEO_DECODE_BACKEND", raising=False)
    assert init_defaults("simple/longva.py", "LongVA")["video_decode_backend"] == "pyav"
    read_video = model_utils_module("load_video").read_video
    for path in videos:
        indices = ours.capped_llava_frames(video_info(path).num_frames, count)
        assert np.array_equal(read_video(str(path), num_frm=count), read_frames(path, indices))


def test_glm4v_has_no_video_path():
    """lmms-eval's ``glm4v`` class sends every visual as ``{"type": "image", "url": ...}``, a video
    file included; the generic ``huggingface`` class passes no frame count, so GLM-4V's processor
    would choose by its own fps. Neither is a rule for ``k`` frames: tpo shows LLaVA's."""
    assert "image" in method_strings("simple/glm4v.py", "GLM4V", "generate_until")
    assert "video" not in method_strings("simple/glm4v.py", "GLM4V", "generate_until")
    assert not {"num_frames", "nframes", "fps"} & method_strings("chat/huggingface.py", "Huggingface", "generate_until")
    assert ours.FRAME_RULES["glm4v"] == "llava"
