"""Reading and writing: recordings, archives, spectrogram cubes, annotations, detections."""
