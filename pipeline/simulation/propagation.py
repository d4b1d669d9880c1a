"""How a call travels from a flying bat to the microphone: distance, air, motion, echoes.

* **Flight.** A passing bat flies a straight line at constant speed ``v`` whose closest
  approach to the microphone is ``d0``; at time ``t`` from that moment its distance is
  ``r = sqrt(d0^2 + (v t)^2)`` and its radial speed ``v^2 t / r`` (positive: moving away).
  Foraging bats fly at a few metres per second, close to their aerodynamic minimum-power
  speed (Holderied, Korine, Fenton, Parsons, Robson & Jones 2005, J Exp Biol 208:1321, for
  Eptesicus bottae tracked by stereo videogrammetry); migrating Pipistrellus nathusii fly faster,
  11-13 m/s (Suba 2014, Environmental and Experimental Biology 12:7). Setting
  ``flight_speed_m_s``, default 2-10 m/s.
* **Spherical spreading.** Sound pressure falls as ``1/r``: -6 dB per doubling of distance.
* **Air absorption** per frequency, from ISO 9613-1:1993 (equations for the attenuation
  coefficient from the relaxation frequencies of oxygen and nitrogen, valid for pure tones;
  Bass, Sutherland, Zuckerwar, Blackstock & Hester 1995, JASA 97:680, give the same physics).
  At 20 C and 50 % relative humidity it gives about 0.5 dB/m at 20 kHz, 1.3 dB/m at 40 kHz,
  2.0 dB/m at 60 kHz and 3.3 dB/m at 100 kHz, so a call 20 m away loses some 26 dB more at
  40 kHz than at the bat's mouth and far more above 100 kHz: the reason high-frequency bats are
  detected only close to the microphone (Lawrence & Simmons 1982, JASA 71:585, measured the same
  magnitudes for ultrasound). It reproduces the standard's tabulated values (ISO 9613-2,
  Table 2: e.g. 22.9 dB/km at 4 kHz and 76.6 dB/km at 8 kHz at 20 C, 70 %). The maintained
  pyfar package has the same formula (``pyfar.constants.air_attenuation``; its values agree
  with these to four decimals, checked by hand), but it would bring matplotlib, netCDF4 and
  five other packages into batml's run-time requirements for fifteen lines of arithmetic, so
  the standard's equations are written here (:func:`attenuation_db_per_m`).
* **Doppler.** A source moving at radial speed ``v_r`` (positive away) is received at
  ``f c / (c + v_r)`` and its calls last ``(c + v_r) / c`` times as long; ``c`` is the speed
  of sound, ``331.3 sqrt(1 + T / 273.15)`` m/s at ``T`` degrees C. At 10 m/s the shift is
  about 3 %, e.g. 1.5 kHz at 50 kHz: up while the bat approaches, down as it leaves.
* **Echoes and reverberation.** Each call is followed by echoes from the ground, vegetation
  or walls: a few discrete echoes 1-5 ms later, 6-18 dB weaker (CALLS.md), and, in cluttered
  places, a tail of many weak echoes over tens of ms. Each echo travels ``c`` times its
  delay further, so the air absorbs its high frequencies more (:meth:`AirPath.extra_gain`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: ISO 9613-1 reference values: air temperature (K), pressure (kPa), triple point of water (K).
_T0, _PR, _T01 = 293.15, 101.325, 273.16
#: Frequencies (Hz) of the absorption table a recording interpolates in.
_TABLE_HZ = np.arange(0.0, 300_001.0, 250.0)


def speed_of_sound(temperature_c: float) -> float:
    """Speed of sound in dry air (m/s) at ``temperature_c`` degrees C."""
    return 331.3 * math.sqrt(1.0 + temperature_c / 273.15)


def attenuation_db_per_m(freq_hz, temperature_c: float, humidity_percent: float,
                         pressure_kpa: float = _PR) -> np.ndarray:
    """Atmospheric absorption of a pure tone (dB/m), ISO 9613-1:1993.

    Parameters
    ----------
    freq_hz
        Frequencies (Hz), scalar or array.
    temperature_c
        Air temperature (C).
    humidity_percent
        Relative humidity (%).
    pressure_kpa
        Atmospheric pressure (kPa).

    Returns
    -------
    numpy.ndarray
        The attenuation coefficient alpha (dB/m) at each frequency: classical and rotational
        losses plus the vibrational relaxation of oxygen and nitrogen, whose relaxation
        frequencies depend on the molar concentration of water vapour.
    """
    f = np.asarray(freq_hz, dtype=np.float64)
    t = temperature_c + 273.15
    p = pressure_kpa / _PR
    # saturation vapour pressure relative to the reference pressure, then molar concentration (%)
    p_sat = 10.0 ** (-6.8346 * (_T01 / t) ** 1.261 + 4.6151)
    h = humidity_percent * p_sat / p
    f_o = p * (24.0 + 4.04e4 * h * (0.02 + h) / (0.391 + h))
    f_n = p * (t / _T0) ** -0.5 * (9.0 + 280.0 * h * math.exp(-4.170 * ((t / _T0) ** (-1.0 / 3.0) - 1.0)))
    classical = 1.84e-11 / p * (t / _T0) ** 0.5
    oxygen = 0.01275 * math.exp(-2239.1 / t) / (f_o + f * f / f_o)
    nitrogen = 0.1068 * math.exp(-3352.0 / t) / (f_n + f * f / f_n)
    return 8.686 * f * f * (classical + (t / _T0) ** -2.5 * (oxygen + nitrogen))


def doppler_factor(radial_speed_m_s, sound_speed_m_s: float):
    """Ratio of received to emitted frequency for a source at ``radial_speed_m_s`` (positive: away)."""
    return sound_speed_m_s / (sound_speed_m_s + np.asarray(radial_speed_m_s, dtype=np.float64))


@dataclass(frozen=True, eq=False)
class Air:
    """The air of one recording: its temperature, humidity, speed of sound and absorption table."""

    temperature_c: float
    humidity_percent: float

    def __post_init__(self) -> None:
        table = attenuation_db_per_m(_TABLE_HZ, self.temperature_c, self.humidity_percent)
        object.__setattr__(self, "_table", table)

    @property
    def speed_of_sound(self) -> float:
        """Speed of sound (m/s)."""
        return speed_of_sound(self.temperature_c)

    def alpha(self, freq_hz) -> np.ndarray:
        """Attenuation (dB/m) at ``freq_hz``, interpolated in a 250 Hz table (exact to < 0.1 %)."""
        return np.interp(freq_hz, _TABLE_HZ, self._table)


@dataclass(frozen=True, eq=False)
class AirPath:
    """The air between one call's bat and the microphone.

    Parameters
    ----------
    air
        The recording's air.
    distance_m
        Distance from the bat to the microphone when the call was emitted.
    reference_hz
        Frequency at which the call's amplitude is given (its peak frequency): the air's
        absorption there is already in the amplitude, so :meth:`tilt` is 1 there.
    """

    air: Air
    distance_m: float
    reference_hz: float

    @property
    def speed_of_sound(self) -> float:
        """Speed of sound (m/s) in this air."""
        return self.air.speed_of_sound

    def tilt(self, freq_hz: np.ndarray) -> np.ndarray:
        """Amplitude gain of the direct path at ``freq_hz`` relative to the reference frequency."""
        excess = self.air.alpha(freq_hz) - self.air.alpha(self.reference_hz)
        return 10.0 ** (-excess * self.distance_m / 20.0)

    def extra_gain(self, freq_hz: np.ndarray, extra_m: float) -> np.ndarray:
        """Amplitude gain of an echo's extra path of ``extra_m`` metres, from absorption alone."""
        return 10.0 ** (-self.air.alpha(freq_hz) * extra_m / 20.0)


@dataclass(frozen=True)
class Flight:
    """A bat flying a straight line past the microphone.

    Parameters
    ----------
    closest_m
        Distance at the closest approach.
    speed_m_s
        Flight speed.
    centre_s
        Time of the closest approach (s, recording time).
    """

    closest_m: float
    speed_m_s: float
    centre_s: float

    def distance(self, times_s) -> np.ndarray:
        """Distance (m) to the microphone at ``times_s``."""
        along = self.speed_m_s * (np.asarray(times_s, dtype=np.float64) - self.centre_s)
        return np.hypot(self.closest_m, along)

    def radial_speed(self, times_s) -> np.ndarray:
        """Radial speed (m/s) at ``times_s``: negative while approaching, positive when leaving."""
        along = self.speed_m_s * (np.asarray(times_s, dtype=np.float64) - self.centre_s)
        return self.speed_m_s * along / np.hypot(self.closest_m, along)

    def level_db(self, times_s, freq_hz, air: Air) -> np.ndarray:
        """Level (dB) at ``times_s`` relative to the closest approach: spreading and absorption.

        ``freq_hz`` is each call's reference frequency (absorption depends on it).
        """
        r = self.distance(times_s)
        return -20.0 * np.log10(r / self.closest_m) - air.alpha(freq_hz) * (r - self.closest_m)


def draw_flight(centre_s: float, distance_m: tuple[float, float], speed_m_s: tuple[float, float],
                rng: np.random.Generator) -> Flight:
    """A flight line: closest approach log-uniform in ``distance_m``, speed uniform in ``speed_m_s``."""
    closest = math.exp(rng.uniform(math.log(distance_m[0]), math.log(distance_m[1])))
    return Flight(closest_m=closest, speed_m_s=float(rng.uniform(*speed_m_s)), centre_s=centre_s)
