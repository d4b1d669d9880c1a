"""A synthetic archive of bat recordings whose every call is annotated exactly.

The recordings imitate what a full-spectrum bat detector hears at night. By default they hold
the calls of the reference system's seven European groups (``CALLS.md``), as before; with
:meth:`SimulationSettings.varied` (``batml simulate --preset varied``) the simulator
randomises what real archives vary in - a generic family of bats of every call design, feeding
buzzes and social calls, flight past the microphone with air absorption and Doppler, echoes and
reverberation, microphones, filters, gains and converters, insects, rain, wind, electrical
tones, and the no-bat parts of real recordings - so that a detector trained on it meets no
recording entirely new to it.

One module per job, along the way a sound goes:

========================= ==========================================================
:mod:`.settings`          every factor, its default, its help line (:class:`SimulationSettings`)
:mod:`.calls`             call shapes, the seven groups' species, call synthesis
:mod:`.generic`           the generic bat family (class ``bat``)
:mod:`.behaviour`         feeding buzzes and social calls
:mod:`.propagation`       distance, air absorption (ISO 9613-1), Doppler, echoes
:mod:`.scene`             passes, scenes, whole recordings
:mod:`.recorder`          microphone and anti-alias responses, gain, clipping, converter, WAV/GUANO
:mod:`.noise`             insects, rain, wind, electrical tones, clicks, real backgrounds
:mod:`.archive`           the archive on disk and its annotations
========================= ==========================================================
"""

from pipeline.simulation.archive import CSV_COLUMNS, SimulatedArchive, simulate_archive
from pipeline.simulation.calls import (
    ANTIALIAS_FRACTION,
    EVENTS,
    GENERIC_CLASS,
    SPECIES_MODELS,
    Call,
    CallType,
    Harmonic,
    SpeciesModel,
    eligible_species,
    render_call,
    synthesize_call,
)
from pipeline.simulation.generic import GENERIC_SHAPE_MODELS, draw_generic_species
from pipeline.simulation.noise import BackgroundLibrary
from pipeline.simulation.propagation import Air, AirPath, Flight, attenuation_db_per_m, doppler_factor, speed_of_sound
from pipeline.simulation.recorder import Recorder, guano_text, wav_bytes
from pipeline.simulation.scene import GROUP_WEIGHTS, SimulatedRecording, draw_calls, draw_pass, simulate_recording
from pipeline.simulation.settings import PRESETS, SimulationError, SimulationSettings

__all__ = [
    "ANTIALIAS_FRACTION", "CSV_COLUMNS", "EVENTS", "GENERIC_CLASS", "GENERIC_SHAPE_MODELS", "GROUP_WEIGHTS",
    "PRESETS", "SPECIES_MODELS", "Air", "AirPath", "BackgroundLibrary", "Call", "CallType", "Flight", "Harmonic",
    "Recorder", "SimulatedArchive", "SimulatedRecording", "SimulationError", "SimulationSettings", "SpeciesModel",
    "attenuation_db_per_m", "doppler_factor", "draw_calls", "draw_generic_species", "draw_pass",
    "eligible_species", "guano_text", "render_call", "simulate_archive", "simulate_recording", "speed_of_sound",
    "synthesize_call", "wav_bytes",
]
