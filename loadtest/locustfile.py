"""Locust traffic against the served Timbral API (``make loadtest`` runs it headless; see loadtest/README.md).

    locust -f loadtest/locustfile.py --host http://127.0.0.1:3000 --model-dir <model artifact dir>

``--model-dir`` (or ``TIMBRAL_MODEL_DIR``) is the served model's artifact directory: the BentoML store path
``$BENTOML_HOME/models/timbral-nmf/<version>`` or ``mlflow artifacts download -u models:/timbral-nmf@champion``
+ ``/artifacts/timbral``. User and item ids are read from it, so the traffic asks for real users and items.

Each simulated user repeatedly draws one request from the mix (``--mix recommend=70,similar=10,history=8,
batch=7,score=5``), sends it, then thinks for ``--think-min``..``--think-max`` seconds. Statistics are kept per
endpoint path. Any non-2xx answer is a failure.
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, events, task

from loadtest.traffic import Ids, Traffic, TrafficConfig, parse_mix

_STATE: dict[str, Traffic] = {}


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    group = parser.add_argument_group("Timbral traffic")
    group.add_argument("--model-dir", env_var="TIMBRAL_MODEL_DIR", default="",
                       help="artifact directory of the served model (ids are read from it)")
    group.add_argument("--mix", env_var="TIMBRAL_MIX", default="",
                       help="endpoint weights, e.g. recommend=70,similar=10,history=8,batch=7,score=5")
    group.add_argument("--unknown-share", env_var="TIMBRAL_UNKNOWN_SHARE", type=float, default=0.05,
                       help="share of users the model has never seen")
    group.add_argument("--zipf", env_var="TIMBRAL_ZIPF", type=float, default=1.05,
                       help="skew of user activity: rank r asks with weight (r+1)^-zipf")
    group.add_argument("--think-min", env_var="TIMBRAL_THINK_MIN", type=float, default=0.1,
                       help="minimum think time between a user's requests (seconds)")
    group.add_argument("--think-max", env_var="TIMBRAL_THINK_MAX", type=float, default=0.5,
                       help="maximum think time between a user's requests (seconds)")
    group.add_argument("--traffic-seed", env_var="TIMBRAL_TRAFFIC_SEED", type=int, default=0,
                       help="seed of the traffic (each locust process adds its pid)")


@events.init.add_listener
def _load_ids(environment, **_kwargs) -> None:
    opts = environment.parsed_options
    if opts is None:  # imported without a command line (e.g. by a test): nothing to set up
        return
    if not opts.model_dir:
        raise SystemExit("loadtest: --model-dir (or TIMBRAL_MODEL_DIR) must name the served model's artifact directory")
    if opts.think_min < 0 or opts.think_max < opts.think_min:
        raise SystemExit("loadtest: need 0 <= --think-min <= --think-max")
    config = TrafficConfig(mix=parse_mix(opts.mix), unknown_share=opts.unknown_share, zipf=opts.zipf)
    _STATE["traffic"] = Traffic(Ids.from_model_dir(opts.model_dir), config, seed=opts.traffic_seed + os.getpid())


class Listener(FastHttpUser):
    """One listener's client: requests drawn from the mix, with think time in between."""

    def wait_time(self) -> float:
        opts = self.environment.parsed_options
        return random.uniform(opts.think_min, opts.think_max)

    @task
    def ask(self) -> None:
        _name, path, body = _STATE["traffic"].next()
        self.client.post(path, json=body, name=path)
