"""FastVideo's own loading path: the bundle loaded the way `VideoGenerator` loads it, in this process.

    built = load_with_fastvideo(bundle, opts, device, generation)   # CUDA only
    pipe, args = built.pipe, built.args                              # FastVideo's pipeline and FastVideoArgs

`VideoGenerator.from_pretrained(bundle, num_gpus=1)` turns its arguments into `FastVideoArgs`
(`fastvideo.api.compat`), starts a worker process, and the worker initialises FastVideo's distributed
state and calls `build_pipeline(args)`: the pipeline class named by `model_index.json` loads every
module through `PipelineComponentLoader` (`TransformerLoader`: meta-device build under the DiT
precision, FastVideo's weight-name mapping, strict load, non-persistent buffers materialised on the
device; the VAE and text-encoder loaders with their precisions and offload settings), then
`post_init` applies its compile settings and `create_pipeline_stages`. The harness does the same
steps in-process, on one GPU, so its hooks reach the modules (the worker process would hide them),
and records what that path chose: the loader, each module's dtype, the offload and compile
settings, the attention FastVideo runs.

What the harness changes, each recorded:
- the `VideoGenerator` arguments are those of FastVideo's own Waypoint example (`offload=example`, the
  default; `offload=defaults` takes `VideoGenerator`'s bare defaults, `offload=off` keeps everything on
  the GPU; see `EXAMPLE_KWARGS`);
- options `precision` / `vae_precision` / `sigmas` are set on the pipeline config before loading;
- a bundle whose transformer differs from FastVideo's default Waypoint architecture has its
  architecture copied into `pipeline_config.dit_config` (the denoising stage takes the latent shape
  from there, the loader only updates a copy); at Waypoint-1-Small's size nothing is copied.

FastVideo's loaders need CUDA (they pick `cuda:LOCAL_RANK` themselves); on CPU the direct build in
`parity.fastvideo.build` is used.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from parity.errors import UserError
from parity.fastvideo.generation import Generation
from parity.fastvideo.writing import dtype_name, model_dtype

LOADER = ("FastVideo's own loader: build_pipeline(FastVideoArgs from api.compat, num_gpus=1) -> "
          "WaypointPipeline.load_modules (PipelineComponentLoader), post_init, in-process")
_OFFLOAD_OFF = {"dit_cpu_offload": False, "dit_layerwise_offload": False, "text_encoder_cpu_offload": False,
                "vae_cpu_offload": False}
EXAMPLE_KWARGS = {"use_fsdp_inference": False, "dit_cpu_offload": True, "vae_cpu_offload": False,
                  "text_encoder_cpu_offload": True, "pin_cpu_memory": True}
"""What FastVideo's own Waypoint example (`examples/inference/basic/basic_waypoint.py`, PR #1058 head) passes
to `VideoGenerator.from_pretrained` beside `num_gpus=1`. `VideoGenerator`'s bare defaults keep the VAE on
the CPU (`vae_cpu_offload=True`), and `WaypointDecodingStage`, unlike FastVideo's generic decoding stage,
never moves it to the GPU: the first decode fails with "Input type (torch.cuda.FloatTensor) and weight
type (torch.FloatTensor) should be the same" (seen on an H200); the example turns that offload off."""
OFFLOAD_KWARGS = {"example": EXAMPLE_KWARGS, "defaults": {}, "off": _OFFLOAD_OFF}


def use_fastvideo_loader(opts: dict[str, Any], device: str, generation: Generation) -> tuple[bool, str]:
    """(load through FastVideo's loader?, why). `loader=auto`: on CUDA for the stage pipeline (PR head);
    the older streaming revisions and the CPU keep the direct build."""
    choice = opts.get("loader", "auto")
    cuda = str(device).startswith("cuda")
    if opts.get("compile") == "on" and (choice == "direct" or not cuda):
        raise UserError("option compile=on is FastVideo's own compile (enable_torch_compile), applied by its loader: "
                        "it needs a CUDA device and loader auto or fastvideo")
    if choice == "fastvideo":
        if not cuda:
            raise UserError("option loader=fastvideo needs a CUDA device (FastVideo's loaders choose cuda:LOCAL_RANK "
                            "themselves); use loader=direct on the CPU")
        return True, "option loader=fastvideo"
    if choice == "direct":
        return False, "option loader=direct"
    if not cuda:
        return False, "auto: CPU (FastVideo's loaders need CUDA)"
    if generation.name != "stages":
        return False, "auto: older streaming revision (its loader is not driven here; the direct build is)"
    return True, "auto: CUDA"


def load_with_fastvideo(bundle: Path, opts: dict[str, Any], device: str, generation: Generation) -> SimpleNamespace:
    """The pipeline FastVideo's worker would build from `bundle`, on `device`, with the harness's options."""
    import torch

    from reference import snapshot as snap

    index = torch.device(device).index or 0
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK=str(index))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    torch.cuda.set_device(index)

    from fastvideo.api.compat import generator_config_to_fastvideo_args, legacy_from_pretrained_to_config
    from fastvideo.distributed import maybe_init_distributed_environment_and_model_parallel
    from fastvideo.pipelines import build_pipeline

    kwargs: dict[str, Any] = {"num_gpus": 1, **OFFLOAD_KWARGS[opts.get("offload", "example")]}
    if opts.get("compile") == "on":
        kwargs["enable_torch_compile"] = True
    args = generator_config_to_fastvideo_args(legacy_from_pretrained_to_config(str(bundle), kwargs))
    pc = args.pipeline_config
    config = snap.read_json(bundle / "transformer" / "config.json")
    resolved = {
        "scheduler_sigmas_default": list(pc.scheduler_sigmas),
        "precision_default": getattr(pc, "dit_precision", None),
        "vae_precision_default": getattr(pc, "vae_precision", None),
        "text_encoder_precisions": list(getattr(pc, "text_encoder_precisions", ()) or ()),
        "checkpoint_scheduler_sigmas": config.get("scheduler_sigmas"),
        "scheduler_sigmas_source": "pipeline config (FastVideo never reads the checkpoint's)",
    }
    if opts.get("precision"):
        pc.dit_precision = pc.precision = opts["precision"]  # the loader reads dit_precision
    if opts.get("vae_precision"):
        pc.vae_precision = opts["vae_precision"]
    if opts.get("sigmas") is not None:
        pc.scheduler_sigmas = list(opts["sigmas"])
        resolved["scheduler_sigmas_source"] = "harness override (option sigmas)"

    maybe_init_distributed_environment_and_model_parallel(1, 1)
    try:
        pipe = build_pipeline(args)
    except Exception as exc:
        raise UserError(f"FastVideo's loader failed on the bundle ({type(exc).__name__}: {exc}); "
                        "`--option loader=direct` builds the modules directly", bundle) from exc
    model = pipe.get_module("transformer")
    arch = getattr(getattr(model, "config", None), "arch_config", None)
    copied = _copy_arch(pc, arch)
    pipe.post_init()  # compile (per FastVideoArgs) and create_pipeline_stages, as the worker's first request does
    model, vae = pipe.get_module("transformer"), pipe.get_module("vae")
    text_encoder = pipe.modules.get("text_encoder")
    module_dtypes = {"transformer": model_dtype(model), "vae": dtype_name(next(vae.parameters()).dtype)}
    if hasattr(model, "denoise_step_emb"):
        module_dtypes["transformer.denoise_step_emb"] = dtype_name(next(model.denoise_step_emb.parameters()).dtype)
    if text_encoder is not None and hasattr(text_encoder, "parameters"):
        module_dtypes["text_encoder"] = dtype_name(next(text_encoder.parameters()).dtype)
    offload = {"option": opts.get("offload", "example"), "kwargs": kwargs,
               **{k: getattr(args, k, None) for k in (*_OFFLOAD_OFF, "use_fsdp_inference", "pin_cpu_memory")}}
    compile_ = "torch.compile (enable_torch_compile)" if getattr(args, "enable_torch_compile", False) else "none"
    return SimpleNamespace(
        model=model, vae=vae, pc=pc, arch=arch, config=config, resolved={**resolved, "arch_copied_to_dit_config": copied},
        ignored_config_keys=[], renames={"param_names_mapping": dict(getattr(arch, "param_names_mapping", {}) or {}),
                                         "by": "FastVideo's TransformerLoader"},
        vae_info={"class": f"{type(vae).__module__}.{type(vae).__name__} (FastVideo's VAE loader)"},
        load_report={"strict": True, "by": "FastVideo's TransformerLoader (strict)"},
        loader=LOADER, compile=compile_, module_dtypes=module_dtypes, offload=offload,
        attention_detail=attention_detail(), pipe=pipe, args=args)


def attention_detail() -> str:
    """Which attention FastVideo's Waypoint model runs (its own module-level choice)."""
    import fastvideo.models.dits.waypoint_transformer as wt

    flex = getattr(wt, "_flex_attention", "absent")
    if flex == "absent":
        backend = os.environ.get("FASTVIDEO_ATTENTION_BACKEND") or "platform default"
        return f"FastVideo attention layers ({backend})"
    return "waypoint_transformer._flex_attention = torch.compile(flex_attention)" if flex is not None else "torch SDPA (no flex attention)"


def _copy_arch(pc, arch) -> bool:
    """Copy the loaded architecture into the pipeline config when it is not FastVideo's default."""
    if arch is None:
        return False
    current = pc.dit_config.arch_config
    fields = getattr(type(arch), "__dataclass_fields__", {})
    if all(getattr(current, k, None) == getattr(arch, k, None) for k in fields if not k.startswith("_")):
        return False
    pc.dit_config.arch_config = arch
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loaded_text_stage(built, request) -> SimpleNamespace:
    """The prompt namespace (as `parity.fastvideo.prompt.prepare_prompt` returns it) for modules FastVideo's
    loader loaded: its own text encoder and tokenizer (its class, its precision), the shared prompt when
    the run injects one."""
    from parity import alignment

    encoder, tokenizer = built.pipe.modules.get("text_encoder"), built.pipe.modules.get("tokenizer")
    common = dict(encoder_class=f"{type(encoder).__module__}.{type(encoder).__name__}",
                  encoder_dtype=built.module_dtypes.get("text_encoder", "unknown"), text_encoder=encoder,
                  tokenizer=tokenizer, why_no_encoder=None if encoder is not None else "FastVideo's loader loaded no text encoder")
    if request.prompt_from is not None:
        emb, mask = alignment.load_shared_prompt(request.prompt_from)
        return SimpleNamespace(emb=emb, mask=mask, source=f"injected from {request.prompt_from}", **common)
    if encoder is None:
        raise UserError("native prompt encoding needs the text encoder FastVideo's loader did not load", built.args.model_path)
    return SimpleNamespace(emb=None, mask=None, source="encoded (FastVideo's text stage, encoder from its loader)", **common)
