"""Physics engine: specimens -> projected signal -> probe -> dose -> detector and scan distortions."""
