"""`tfx inspect decoding`: training is parallel, decoding serial, and both give one answer.

Greedy decoding (the model's own `decode_all`, with its KV cache) runs the decoder once
per output piece, each time on one new token. Training's teacher forcing runs it once
on the whole shifted target, BOS y_1 .. y_n, and the look-ahead mask keeps position t
from seeing anything after t. Fed greedy's own output, that one pass must give the
distributions greedy computed step by step. Hooks on the model's decoder and output
projection count the passes and record the distributions; nothing is re-implemented.
"""

from __future__ import annotations

import dataclasses

from transformer_cli.core.errors import DataError

PARALLEL_TOLERANCE = 1e-5  # fp32: the two orders of summation differ by ~1e-7


def _recording(model):
    """Hooks that count decoder passes and keep every output projection's result."""
    passes, logits = [], []
    hooks = [
        model.decoder.register_forward_hook(lambda *_: passes.append(1)),
        # cloned: greedy search rules out <pad> and <s> in the logits in place
        model.out_proj.register_forward_hook(lambda _m, _a, out: logits.append(out.clone())),
    ]
    return passes, logits, hooks


def decoding_view(model, tokenizer, cfg, text: str, source: str) -> dict:
    """Greedy decoding of `text` step by step, beside one teacher-forced pass over its output."""
    import torch

    from transformer_cli.core.specials import BOS_ID
    from transformer_cli.decoding.limits import fit_sources
    from transformer_cli.decoding.runner import decode_all, greedy

    (ids,), _ = fit_sources(tokenizer.encode_src([text]), model.cfg.max_positions)
    if not ids:
        raise DataError("nothing to decode: the sentence is empty")
    passes, logits, hooks = _recording(model)
    try:
        # one check per step: each decoder pass is then one output piece
        one_by_one = dataclasses.replace(greedy(cfg.decode), sync_every=1)
        hyp = decode_all(model, [ids], one_by_one, "cpu")[0]
        serial_passes = len(passes)
        serial = torch.cat([lg.reshape(-1, lg.size(-1)) for lg in logits]).log_softmax(-1)
        passes.clear()
        logits.clear()
        tgt_in = torch.tensor([[BOS_ID, *hyp]])[:, : len(serial)]  # (1, T) greedy's inputs
        with torch.no_grad():
            model(torch.tensor([ids]), tgt_in)
        parallel = logits[0][0].log_softmax(-1)  # (T, V)
        parallel_passes = len(passes)
    finally:
        for h in hooks:
            h.remove()
    gap = (serial.exp() - parallel.exp()).abs()  # (T, V)
    chosen = [*hyp, int(serial[-1].argmax())][: len(serial)]  # what each step emitted
    return {
        "source": source,
        "text": text,
        "translation": tokenizer.decode_tgt([hyp])[0],
        "inputs": tokenizer.tgt_pieces(tgt_in[0].tolist()),
        "outputs": tokenizer.tgt_pieces(chosen),
        "serial_passes": serial_passes,
        "parallel_passes": parallel_passes,
        "p_serial": serial.exp().gather(1, torch.tensor(chosen)[:, None])[:, 0].tolist(),
        "p_parallel": parallel.exp().gather(1, torch.tensor(chosen)[:, None])[:, 0].tolist(),
        "max_gap_per_step": gap.max(-1).values.tolist(),
        "max_gap": gap.max().item(),
    }


def format_decoding(view: dict) -> str:
    """The decoding view as the text `tfx inspect decoding` prints."""
    steps = len(view["outputs"])
    out = [
        f"{view['text']}  ->  {view['translation']}   ({view['source']})",
        f"serial (greedy decoding with the KV cache): {view['serial_passes']} decoder passes, "
        "one new token each",
        f"parallel (teacher forcing, as in training): {view['parallel_passes']} decoder pass "
        f"over all {steps} positions, the look-ahead mask hiding the future",
        "",
        "     t  decoder input      predicted           p (serial)  p (parallel)  max |dp| "
        "over the vocabulary",
    ]
    for t in range(steps):
        out.append(
            f"  {t:>4}  {view['inputs'][t][:17]:<17}  {view['outputs'][t][:18]:<18}"
            f"  {view['p_serial'][t]:>10.6f}  {view['p_parallel'][t]:>12.6f}  "
            f"{view['max_gap_per_step'][t]:.1e}"
        )
    same = view["max_gap"] < PARALLEL_TOLERANCE
    out += [
        "",
        f"largest difference of any probability: {view['max_gap']:.1e} "
        f"({'equal up to float rounding' if same else 'NOT EQUAL'})",
        "the decoder is serial only at inference, where each output is the next input; "
        "in training every target is known, so all positions are computed in one pass",
    ]
    return "\n".join(out)
