"""Each side's own per-frame noise draw, and which known rule it follows.

Shared noise replaces a side's draw before the model sees it, so the side's own rule would never be
checked. Both runners therefore let the side draw as it would (`noise.native`) and hand every such
draw to a `NoiseWitness`, which redraws each known rule's candidate for that seed and frame at the
same shape, dtype and device, and names the first one that reproduces the draw bitwise:

    global               torch.manual_seed(seed) once, then frame after frame from the global RNG
                         (upstream's world_engine; FastVideo 2e2375dc8)
    per_frame_generator  a fresh torch.Generator(device).manual_seed(seed + frame) per frame
                         (FastVideo 640e654f3 and the PR head; the seed document's script)

The rule is kept as the frame's note `noise.native` (with the generator's device and seed, the
dtype and the device of the draw). A side whose draw follows a known rule other than the other
side's is a protocol difference, listed in the config diff (`native noise rule`), not a failure;
a draw that follows no known rule (seed + frame + 1, a generator seeded once and reused, another
stream) fails at that frame's `noise.native` stage (`judge`).
"""

from __future__ import annotations

from typing import Any

RULES = {
    "global": "torch.manual_seed(seed) once, global RNG per frame",
    "per_frame_generator": "Generator(device).manual_seed(seed + frame)",
}
NOTE = "noise.native"


class NoiseWitness:
    def __init__(self, seed: int, randn=None):
        import torch

        self.seed = int(seed)
        self._randn = randn or torch.randn
        self._replay: dict[str, Any] = {}  # device -> generator following the global RNG's stream

    def identify(self, draw, frame: int, generator=None) -> dict[str, Any]:
        """The note for one draw: {"rule": name or None, "generator": device or None, "seed": int or
        None, "dtype", "device"}."""
        import torch

        shape, dtype, device = tuple(draw.shape), draw.dtype, draw.device
        note: dict[str, Any] = {"rule": None, "generator": None, "seed": None,
                                "dtype": str(dtype).removeprefix("torch."), "device": str(device)}
        if generator is None:
            key = str(device)
            if key not in self._replay:
                self._replay[key] = torch.Generator(device=device).manual_seed(self.seed)
            candidate = self._randn(shape, generator=self._replay[key], dtype=dtype, device=device)
            if torch.equal(candidate, draw):
                note["rule"] = "global"
            return note
        note["generator"], note["seed"] = str(generator.device), int(generator.initial_seed())
        fresh = torch.Generator(device=generator.device).manual_seed(self.seed + frame)
        candidate = self._randn(shape, generator=fresh, dtype=dtype, device=device)
        if note["seed"] == self.seed + frame and torch.equal(candidate, draw):
            note["rule"] = "per_frame_generator"
        return note


def describe(note: dict[str, Any] | None) -> str:
    if not note:
        return "not recorded"
    how = f"Generator({note['generator']}) seeded {note['seed']}" if note.get("generator") else "global RNG"
    rule = note.get("rule")
    return f"{rule} ({how}, {note.get('dtype')} on {note.get('device')})" if rule else f"no known rule ({how}, {note.get('dtype')} on {note.get('device')})"


def summary(notes: list[dict[str, Any]]) -> str:
    """One line for the protocol's `native_noise_rule`: the rule every frame followed, or where it did not."""
    if not notes:
        return "no native draw observed"
    rules = [n.get("rule") for n in notes]
    first = rules[0]
    if all(r == first for r in rules) and first is not None:
        return f"{first}: {RULES[first]}"
    bad = [i for i, r in enumerate(rules) if r is None]
    if bad:
        return f"no known rule at frames {_ranges(bad)} (first: {describe(notes[bad[0]])})"
    return "mixed: " + ", ".join(f"frame {i} {r}" for i, r in enumerate(rules))


def _ranges(frames: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    spans = [[frames[0], frames[0]]]
    for f in frames[1:]:
        if f == spans[-1][1] + 1:
            spans[-1][1] = f
        else:
            spans.append([f, f])
    return ", ".join(str(x) if x == y else f"{x}-{y}" for x, y in spans)


def judge(frame: int, a, b) -> tuple[str, str] | None:
    """For a `noise.native` stage present on both sides: ("pass" | "fail", why), or None when both
    follow the same known rule on the same device and dtype, so the values are compared as usual."""
    na, nb = a.frame_note(frame, NOTE), b.frame_note(frame, NOTE)
    for side, other, note, other_note in ((b, a, nb, na), (a, b, na, nb)):
        if note is not None and note.get("rule") is None:
            return "fail", (f"{side.name}'s native noise matches no known rule at frame {frame} ({other.name}: "
                            f"{describe(other_note)}; {side.name}: {describe(note)}; known: {', '.join(RULES)})")
    if na is None or nb is None or all(na.get(k) == nb.get(k) for k in ("rule", "device", "dtype")):
        return None
    return "pass", (f"both follow a known rule: {a.name} {describe(na)}, {b.name} {describe(nb)} "
                    "(a protocol difference, listed in the config diff)")
