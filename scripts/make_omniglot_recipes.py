"""Write the Omniglot recipes (``src/fewshot/recipes/omniglot_*``) with the papers' hyper-parameters.

MAML / first-order MAML: Finn et al. 2017. Reptile: Nichol et al. 2018 (their run commands). ProtoNet: Snell et al.
2017 (60-way training episodes, Adam 1e-3 halved every 2000 episodes, Vinyals split). MAML and Reptile are evaluated
transductively, as the papers' code (``transductive: true``: batch statistics over each task's query batch). Run once
after editing.
"""

from __future__ import annotations

from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "src" / "fewshot" / "recipes"
CELLS = [(5, 1), (5, 5), (20, 1), (20, 5)]


def maml(way: int, shot: int, first_order: bool) -> dict:
    five = way == 5
    name = "fomaml" if first_order else "maml"
    return {
        "name": f"omniglot_{way}w{shot}s_{name}",
        "description": f"{'First-order ' if first_order else ''}MAML, Omniglot {way}-way {shot}-shot "
                       f"(Finn et al. 2017 hyper-parameters; Finn split; nearest-neighbour 28x28 as Finn's code)",
        "experiment": "episodic",
        "data": {"name": "omniglot", "options": {"scheme": "maml", "resize": "nearest", "rotations": True}},
        "model": {"name": "conv4", "options": {"variant": "strided", "pool": "mean"}},
        "method": {"name": "maml", "options": {"inner_steps": 1 if five else 5, "inner_lr": 0.4 if five else 0.1,
                                               "test_inner_steps": 10, "first_order": first_order,
                                               "transductive": True}},
        "train": {"way": way, "shot": shot, "query": 5, "meta_batch": 32 if five else 16, "iterations": 60000,
                  "optimizer": "adam", "lr": 1e-3, "val_every": 500, "val_episodes": 200,
                  "checkpoint_every": 100},
        "eval": {"way": way, "shot": shot, "query": 15, "episodes": 600, "seed": 0},
    }


def reptile(way: int, shot: int) -> dict:
    five = way == 5
    return {
        "name": f"omniglot_{way}w{shot}s_reptile",
        "description": f"Reptile, Omniglot {way}-way {shot}-shot (Nichol et al. 2018 settings: 10 training shots, "
                       "Adam beta1=0 inner loop, meta step 1 annealed to 0; transductive evaluation)",
        "experiment": "episodic",
        "data": {"name": "omniglot", "options": {"scheme": "maml", "resize": "nearest", "rotations": True}},
        "model": {"name": "conv4", "options": {"variant": "strided", "pool": "flatten"}},
        "method": {"name": "reptile", "options": {
            "inner_steps": 5 if five else 10, "inner_batch": 10 if five else 20,
            "inner_lr": 1e-3 if five else 5e-4, "test_inner_steps": 50, "test_inner_batch": 5 if five else 10,
            "transductive": True}},
        "train": {"way": way, "shot": 10, "query": 0, "meta_batch": 5, "iterations": 100000 if five else 200000,
                  "optimizer": "sgd", "lr": 1.0, "lr_final": 0.0, "schedule": "linear", "val_every": 1000,
                  "val_episodes": 200, "checkpoint_every": 500},
        "eval": {"way": way, "shot": shot, "query": 15, "episodes": 600, "seed": 0},
    }


def protonet(way: int, shot: int) -> dict:
    return {
        "name": f"omniglot_{way}w{shot}s_protonet",
        "description": f"Prototypical networks, Omniglot {way}-way {shot}-shot (Snell et al. 2017: 60-way training "
                       "episodes, Vinyals split, max-pool Conv-4)",
        "experiment": "episodic",
        "data": {"name": "omniglot", "options": {"scheme": "vinyals", "resize": "nearest", "rotations": True}},
        "model": {"name": "conv4", "options": {"variant": "maxpool", "pool": "flatten", "running_stats": True}},
        "method": {"name": "protonet", "options": {}},
        "train": {"way": 60, "shot": shot, "query": 5, "meta_batch": 1, "iterations": 20000, "optimizer": "adam",
                  "lr": 1e-3, "schedule": "step", "step_size": 2000, "gamma": 0.5, "val_every": 500,
                  "val_episodes": 200, "checkpoint_every": 250},
        "eval": {"way": way, "shot": shot, "query": 15, "episodes": 600, "seed": 0},
    }


def main() -> None:
    for way, shot in CELLS:
        for recipe in (maml(way, shot, False), maml(way, shot, True), reptile(way, shot), protonet(way, shot)):
            (OUT / f"{recipe['name']}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False, width=120))
            print(recipe["name"])


if __name__ == "__main__":
    main()
