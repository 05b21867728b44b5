"""The validation search behind the unlearning defaults (docs/evaluation.md, "How the defaults were chosen").

Validation data only: every score is the stage's validation score (the one that also picks its
checkpoint), never test data or an attack. Both paths get the same grid and step budget.

* ``pretrain``: steps x learning rate of the evaluation's float pretraining (all classes);
* ``forget``: a learning rate per method and path, base x (1/3, 1, 3), on the class-wise protocol
  (``forget:<the configuration's class>``) and on the random-sample one (``forget:10%``); the choice
  maximises the mean score summed over both protocols;
* ``default``: the default demo's setting the issue found chosen on test data: the face
  workload's gradient-ascent cap (forget request of the default scenario), the speaker workload's
  rehearsal size (the add request, ``learn:0+1+2+3+4,add:5``).

    python benchmarks/tune_unlearning.py --workload face --data-dir ../shared/data --seeds 2 > docs/tuning_face.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from rmlora.config import ScenarioConfig, parse_requests
from rmlora.methods import FIELD_METHODS
from rmlora.runinfo import cpu_info, versions
from rmlora.scenario.tuning import choose, search_forget, search_pretrain, search_setting
from rmlora.threads import configure_threads

PRETRAIN_GRID = {"face": [(800, 5e-3), (800, 1e-2), (1600, 5e-3)], "speaker": [(600, 2e-3), (600, 4e-3), (1200, 2e-3)]}
DEFAULTS = {"face": ("ga_cap", [1.0, 2.0, 4.0], None), "speaker": ("rehearsal_per_class", [20, 60, 100],
                                                                    "learn:0+1+2+3+4,add:5")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=("face", "speaker"), required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=100, help="first seed (apart from the evaluation's seeds 0..9)")
    ap.add_argument("--what", choices=("all", "pretrain", "forget", "default"), default="all")
    ap.add_argument("--configuration", default="eval")
    ap.add_argument("--cache", default=None, help="pretrained-model cache folder (rmlora demo --cache)")
    ap.add_argument("--into", default=None, help="a JSON file of earlier sections: they are kept, the new one replaces "
                                                 "its own, and the whole is printed")
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args(argv)
    configure_threads(1)
    t0 = time.perf_counter()
    base = ScenarioConfig(workload=a.workload, configuration=a.configuration, data_dir=a.data_dir, seed=a.seed,
                          seeds=a.seeds, progress=False, cache=a.cache)
    out: dict = {"workload": a.workload, "configuration": a.configuration, "seeds": a.seeds, "first_seed": a.seed,
                 "versions": versions(), "cpu": cpu_info()}
    if a.into:
        with open(a.into) as f:
            out = {**json.load(f), **{k: out[k] for k in ("versions", "cpu")}}
    if a.what in ("all", "pretrain"):
        res = search_pretrain(base, PRETRAIN_GRID[a.workload], a.progress)
        out["pretrain"] = {**res, "chosen": choose(res["scores"])}
    if a.what in ("all", "forget"):
        methods = [m for m in FIELD_METHODS if m != "mask"]
        runs = {"class": search_forget(base.replace(methods=methods), progress=a.progress),
                "samples": search_forget(base.replace(methods=methods, requests=parse_requests("forget:10%")),
                                         progress=a.progress)}
        chosen = {}
        for m in methods:
            chosen[m] = []
            for kind in ("lora", "full"):
                lrs = runs["class"]["scores"][m][kind]
                total = {lr: [sum(v) for v in zip(lrs[lr], runs["samples"]["scores"][m][kind][lr])] for lr in lrs}
                chosen[m].append(choose(total))
        out["forget"] = {**runs, "chosen": chosen}
    if a.what in ("all", "default"):
        name, grid, requests = DEFAULTS[a.workload]
        cfg = ScenarioConfig(workload=a.workload, data_dir=a.data_dir, seed=a.seed, seeds=a.seeds, progress=False,
                             cache=a.cache, requests=parse_requests(requests) if requests else None,
                             settings={"retention_chips": 0})
        res = search_setting(cfg, name, grid, 1, a.progress)
        mean = {v: [x + y for x, y in zip(res["scores"][v]["lora"], res["scores"][v]["full"])] for v in res["scores"]}
        out["default"] = {**res, "chosen": choose(mean)}
    out.setdefault("seconds_by_section", {})[a.what] = round(time.perf_counter() - t0, 1)
    json.dump(out, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
    return out


if __name__ == "__main__":
    main()
