"""Training data: dataset sources (`sources`), their file formats (`formats`), the procedural synthetic scenes
(`synthetic`, built from `scenes`, `raycast` and `textures`) and the Grain pipelines built on them."""
