"""Evaluation: detections scored against annotated calls.

- :mod:`~pipeline.evaluation.matching`: events, and detections matched to them within 10 ms;
- :mod:`~pipeline.evaluation.metrics`: precision-recall curves, AP, mAP, top-1, the reference
  system's scores, multi-label set metrics, end-to-end scores;
- :mod:`~pipeline.evaluation.thresholds`: thresholds tuned by coordinate ascent;
- :mod:`~pipeline.evaluation.report`: every score in one document, and its text;
- :mod:`~pipeline.evaluation.recordings`: a model on annotated recordings of a cube;
- :mod:`~pipeline.evaluation.run`: ``batml evaluate``.
"""
