"""The metrics: the image protocol and features (``features``), FID (``fid``), precision / recall /
density / Coverage (``prdc``), reference and sample features with caching (``reference``), CLIP
score (``clip_score``), latency (``latency``), and the stand-in feature network (``standins``)."""
