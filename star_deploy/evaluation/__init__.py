"""How close a pipeline is to the reference: errors, token agreement, PSNR and the thresholds table."""
