"""The toy reproduction: a research harness above ``tpo`` and ``data_gen`` (it uses both; neither uses it).

- :mod:`toy.world`: long toy clips of shapes appearing one after another, moments in them, and
  their held-out questions;
- :mod:`toy.base`: the toy base model of a seed, trained from a tiny LLaVA-OneVision and cached;
- :mod:`toy.niah`: toy haystacks for the needle-in-a-haystack grid;
- :mod:`toy.stats`: mean ± std over seeds and the paired bootstrap interval;
- :mod:`toy.llm`: the toy captioner, question writer and judge (served over HTTP by
  :class:`data_gen.scripted_server.ScriptedServer` via :func:`toy.llm.toy_server`);
- :mod:`toy.reproduction`: ``data_gen`` -> ``tpo fit`` -> evaluation, every stage the real one.
"""
