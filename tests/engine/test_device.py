"""Devices: ``train.device`` is validated; on a GPU (skipped without one) every method runs there and gives what it
gives on the CPU, and the engine trains, checkpoints and evaluates there."""

from __future__ import annotations

import pytest
import torch

from fewshot.config import TrainConfig
from fewshot.data.tasks import fixed_episodes
from fewshot.errors import FewShotError

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_device_setting_is_validated():
    with pytest.raises(FewShotError, match="train.device must be one of"):
        TrainConfig(device="tpu")
    with pytest.raises(FewShotError, match="train.device must be one of"):
        TrainConfig(device="cpu:1")
    assert TrainConfig(device="cpu").torch_device() == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert TrainConfig().torch_device().type == expected  # the default is auto


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_a_clear_error(data_root):
    from fewshot.config import load_config
    from fewshot.engine.experiment import build_experiment

    config = load_config("omniglot_5w1s_protonet", ["train.device=cuda"])
    with pytest.raises(FewShotError, match="torch sees no GPU"):
        build_experiment(config, str(data_root))


def _cpu_and_gpu(method):
    import copy

    return method, copy.deepcopy(method).to("cuda")


def _agree(cpu_logits: torch.Tensor, gpu_logits: torch.Tensor, atol: float) -> None:
    gpu_logits = gpu_logits.cpu()
    assert torch.allclose(cpu_logits, gpu_logits, atol=atol), (cpu_logits - gpu_logits).abs().max()
    assert (cpu_logits.argmax(-1) == gpu_logits.argmax(-1)).float().mean() >= 0.95


@gpu
def test_text_methods_give_the_cpu_results_on_a_gpu(data_root):
    pytest.importorskip("transformers")
    from fewshot.data.text import text_dataset
    from fewshot.methods.features import FeatureExtraction, FeaturesConfig
    from fewshot.methods.finetune import FineTune, FineTuneConfig
    from fewshot.methods.prompt import PromptConfig, PromptTuning
    from fewshot.models.text import MiniLMEncoder

    torch.backends.cuda.matmul.allow_tf32 = False
    episode = next(iter(fixed_episodes(text_dataset("hwu64", "test", data_root), 5, 1, 3, 2, seed=0)))
    model = MiniLMEncoder()
    methods = [
        (FeatureExtraction(model, FeaturesConfig(classifier="logreg")), 1e-3),
        (FineTune(model, FineTuneConfig(steps=3, lr=2e-5, head_lr=1e-2, optimizer="adam", weight_decay=0.0)), 2e-3),
        (PromptTuning(model, PromptConfig(length=4, steps=3)), 2e-3),
    ]
    for method, atol in methods:
        cpu, gpu_method = _cpu_and_gpu(method.eval())
        assert gpu_method.device.type == "cuda"
        _agree(cpu.predict(episode), gpu_method.predict(episode.to("cuda")), atol)
        assert all(p.device.type == "cpu" for p in model.parameters())  # the CPU copy was not moved


def _meta_gradients(method, episode) -> dict[str, torch.Tensor]:
    method.zero_grad(set_to_none=True)
    method.training_gradient(episode)
    return {name: p.grad.detach().cpu().double() for name, p in method.named_parameters() if p.grad is not None}


def _relative_error(got: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> float:
    """‖got − exact‖ / ‖exact‖ over all meta-parameters but the conv biases (batch norm cancels them: their
    gradient is rounding noise)."""
    keys = [k for k in exact if not (k.startswith("model.convs.") and k.endswith("bias"))]
    num = sum(float(((got[k] - exact[k]) ** 2).sum()) for k in keys) ** 0.5
    return num / sum(float((exact[k] ** 2).sum()) for k in keys) ** 0.5


def _image_method(recipe: str, overrides: list[str] | None = None):
    from fewshot.config import load_config
    from fewshot.engine.experiment import build_method

    config = load_config(recipe, ["model.options.image_size=16", *(overrides or [])])
    torch.manual_seed(0)
    return build_method(config, config.eval.way)


@gpu
@pytest.mark.parametrize("recipe", ["omniglot_5w1s_maml", "omniglot_5w1s_fomaml", "omniglot_5w1s_protonet",
                                    "omniglot_5w1s_reptile"])
def test_meta_gradients_on_a_gpu_match_the_exact_ones(data_root, recipe):
    """USPS digits (16x16, real, small) as 5-way 5-shot tasks: the GPU's meta-gradients are within 1% of the
    float64 CPU ones (float32 on the CPU: 1e-5 to 9e-4 here). At one shot, batch norm over 5 examples of a 1x1
    feature map makes even float32 vs float64 on the CPU differ by 5-10%, so one shot cannot test a device."""
    import copy

    from fewshot.data.digits import digits
    from fewshot.data.tasks import TaskSampler

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    episode = TaskSampler(digits("usps", "all", data_root), 5, 5, 5, seed=0).sample(4, 0)
    cpu = _image_method(recipe)
    exact_method = copy.deepcopy(cpu).double()
    gpu_method = copy.deepcopy(cpu).to("cuda")
    torch.manual_seed(1)  # Reptile's inner loop shuffles with the global generator
    exact = _meta_gradients(exact_method, episode.to("cpu", torch.float64))
    torch.manual_seed(1)
    got = _meta_gradients(gpu_method, episode.to("cuda"))
    assert exact and list(exact) == list(got)
    assert _relative_error(got, exact) <= 1e-2
    # predictions: as close to the float64 ones as the CPU's float32 ones are (Reptile's 50 test-time Adam steps
    # amplify rounding: its float32 CPU logits differ from the float64 ones by up to ~1.2)
    logits = {}
    for name, method, device, dtype in (("exact", exact_method, "cpu", torch.float64), ("cpu", cpu, "cpu", None),
                                        ("gpu", gpu_method, "cuda", None)):
        torch.manual_seed(2)
        logits[name] = method.predict(episode.to(device, dtype)).detach().cpu().double()
    cpu_error = (logits["cpu"] - logits["exact"]).abs().max()
    assert (logits["gpu"] - logits["exact"]).abs().max() <= max(1e-2, 3 * cpu_error)
    agree = (logits["gpu"].argmax(-1) == logits["exact"].argmax(-1)).double().mean()
    assert agree >= (logits["cpu"].argmax(-1) == logits["exact"].argmax(-1)).double().mean() - 0.05


@gpu
def test_engine_trains_checkpoints_and_evaluates_on_a_gpu(data_root, tmp_path):
    """DANN MNIST -> USPS through the engine on the GPU (domain batches are dataclasses of tensors); the checkpoint
    reloads into a CPU run that scores the same."""
    from fewshot.config import load_config
    from fewshot.engine.checkpoint import load_checkpoint
    from fewshot.engine.experiment import build_experiment
    from fewshot.engine.train import train

    overrides = ["train.iterations=100", "train.checkpoint_every=100"]
    experiment = build_experiment(load_config("mnist_usps_dann", ["train.device=cuda", *overrides]), str(data_root))
    assert experiment.method.device.type == "cuda"
    result = train(experiment, tmp_path / "run", progress=False)
    assert result.iterations == 100
    on_gpu = experiment.test()
    cpu = build_experiment(load_config("mnist_usps_dann", ["train.device=cpu", *overrides]), str(data_root))
    cpu.method.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors").weights)
    on_cpu = cpu.test()
    assert on_gpu.accuracy > 0.15  # above chance (0.1); 100 steps on the CPU give 25.5%
    assert abs(on_gpu.accuracy - on_cpu.accuracy) <= 0.01, (on_gpu, on_cpu)  # same weights, same images
