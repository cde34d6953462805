"""Files on disk without loss: atomic writes, output sets, PNG images, versioned records, interrupts."""
