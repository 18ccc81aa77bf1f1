"""Text-conditioned image generation by diffusion: the noise schedule and samplers
(:mod:`.schedule`), prompts and the model's inputs (:mod:`.prompts`), training
(:mod:`.trainer`, task ``diffusion`` of ``dlspec build``), the judge of sample quality
(:mod:`.judge`), image grids (:mod:`.grid`) and loading a trained model to sample from
(:mod:`.run`)."""
