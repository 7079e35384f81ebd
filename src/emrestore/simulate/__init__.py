"""Physics engine: specimen -> projected signal -> probe -> dose -> detector and scan."""
