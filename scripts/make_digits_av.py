#!/usr/bin/env python3
"""Generates the embedded ``digits_av`` multimodal dataset.

Run once by developers (needs ``espeak-ng`` and scikit-learn)::

    python scripts/make_digits_av.py [--seed 0]

Writes ``mmjax/data/assets/digits_av.npz`` and
``mmjax/data/assets/digits_av_vocab.txt``. See
``mmjax/data/builders/digits_av.py`` for the dataset description. The output
is deterministic given ``--seed`` (and the installed espeak-ng version).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import scipy.io.wavfile
import scipy.signal

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmjax.data import digits_av_phrases as phrases  # noqa: E402

ASSETS = REPO / "mmjax" / "data" / "assets"

SAMPLE_RATE = 16_000
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_FFT = 512
N_MELS = 40
LOG_EPS = 1e-6
TRIM_DB = (35.0, 30.0, 25.0, 20.0, 15.0, 10.0)  # tried in order, see trim_bounds
TRIM_MARGIN = 2  # frames of context kept around the voiced region
MIN_FRAMES, MAX_FRAMES = 30, 80  # target utterance length range

VOICES = (
  "en",
  "en-us",
  "en-gb-scotland",
  "en-gb-x-rp",
  "en-gb-x-gbclan",
  "en-gb-x-gbcwmd",
  "en-029",
  "en-us-nyc",
)
VARIANTS = ("", "+f2", "+f3", "+f4", "+m3", "+m5", "+klatt", "+croak")
SPEED_RANGE = (120, 220)
PITCH_RANGE = (10, 90)

# Corruption levels (tuned for the proxy accuracies in the builder docstring).
IMAGE_NOISE_STD = 0.08  # Gaussian pixel noise, in units of the 0..1 range
SNR_DB_RANGE = (-10.0, 2.0)  # noise mixed into the waveform
UNINFORMATIVE_PROB = 0.1
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)


# ----------------------------------------------------------------------------
# Audio.
# ----------------------------------------------------------------------------
def synthesize(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
  """Speaks ``word`` with espeak-ng; returns float32 mono audio at 16 kHz."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "out.wav")
    subprocess.run(
      ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", path, word],
      check=True,
      capture_output=True,
    )
    rate, wav = scipy.io.wavfile.read(path)
  wav = wav.astype(np.float32) / 32768.0
  if wav.ndim > 1:
    wav = wav.mean(axis=1)
  if rate != SAMPLE_RATE:
    g = np.gcd(rate, SAMPLE_RATE)
    wav = scipy.signal.resample_poly(wav, SAMPLE_RATE // g, rate // g)
  return wav.astype(np.float32)


def _hz_to_mel(hz):
  return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel):
  return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


def mel_filterbank(
  n_mels: int = N_MELS,
  n_fft: int = N_FFT,
  sr: int = SAMPLE_RATE,
  fmin: float = 20.0,
  fmax: float | None = None,
) -> np.ndarray:
  """Triangular HTK-style mel filterbank, shape ``[n_fft // 2 + 1, n_mels]``."""
  fmax = fmax or sr / 2
  mel_points = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)
  hz_points = _mel_to_hz(mel_points)
  freqs = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
  lo, ctr, hi = hz_points[:-2], hz_points[1:-1], hz_points[2:]
  up = (freqs[:, None] - lo) / (ctr - lo)
  down = (hi - freqs[:, None]) / (hi - ctr)
  return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


_MEL_FB = mel_filterbank()
_WINDOW = scipy.signal.get_window("hann", WIN_LENGTH, fftbins=True)


def power_frames(wav: np.ndarray) -> np.ndarray:
  """Short-time power spectrum, shape ``[frames, n_fft // 2 + 1]``."""
  if len(wav) < WIN_LENGTH:
    wav = np.pad(wav, (0, WIN_LENGTH - len(wav)))
  n = 1 + (len(wav) - WIN_LENGTH) // HOP_LENGTH
  idx = np.arange(WIN_LENGTH)[None, :] + HOP_LENGTH * np.arange(n)[:, None]
  frames = wav[idx] * _WINDOW
  spec = np.fft.rfft(frames, n=N_FFT, axis=-1)
  return (spec.real**2 + spec.imag**2).astype(np.float32)


def trim_bounds(wav: np.ndarray) -> tuple[int, int]:
  """Sample range of ``wav`` without leading/trailing silence (+ margin).

  Frames quieter than ``peak - TRIM_DB`` dB at both ends are dropped; the
  threshold is raised step by step while the result exceeds ``MAX_FRAMES``,
  and short results are widened symmetrically (into the surrounding silence)
  to ``MIN_FRAMES`` where the waveform allows it.
  """
  energy = power_frames(wav).sum(-1)
  db = 10 * np.log10(energy + 1e-12)
  for thr in TRIM_DB:
    active = np.nonzero(db > db.max() - thr)[0]
    first = max(0, active[0] - TRIM_MARGIN)
    last = min(len(energy) - 1, active[-1] + TRIM_MARGIN)
    if last - first + 1 <= MAX_FRAMES:
      break
  missing = MIN_FRAMES - (last - first + 1)
  if missing > 0:
    first = max(0, first - (missing + 1) // 2)
    last = min(len(energy) - 1, first + MIN_FRAMES - 1)
  return first * HOP_LENGTH, last * HOP_LENGTH + WIN_LENGTH


def noisy_log_mel(wav: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
  """Trims ``wav``, mixes in coloured noise at ``snr_db``; returns log-mels."""
  start, stop = trim_bounds(wav)
  wav = wav[start:stop]
  # Noise: white noise with a random first-order spectral tilt.
  white = rng.standard_normal(len(wav) + 1).astype(np.float32)
  tilt = rng.uniform(-0.9, 0.9)
  noise = white[1:] + tilt * white[:-1]
  sig_pow = np.mean(wav**2)
  noise *= np.sqrt(sig_pow / (np.mean(noise**2) * 10 ** (snr_db / 10)))
  mel = power_frames(wav + noise) @ _MEL_FB
  return np.log(mel + LOG_EPS).astype(np.float32)


# ----------------------------------------------------------------------------
# Images.
# ----------------------------------------------------------------------------
def corrupt_image(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Adds pixel noise and one random occluder to an 8x8 image in [0, 1]."""
  img = img + rng.normal(0.0, IMAGE_NOISE_STD, img.shape)
  kind = rng.integers(3)
  if kind == 0:  # horizontal band, 2 pixels high
    r = rng.integers(0, 7)
    img[r : r + 2, :] = rng.uniform(0.0, 1.0)
  elif kind == 1:  # vertical band, 2 pixels wide
    c = rng.integers(0, 7)
    img[:, c : c + 2] = rng.uniform(0.0, 1.0)
  else:  # square patch
    s = rng.integers(3, 5)
    r, c = rng.integers(0, 9 - s, size=2)
    img[r : r + s, c : c + s] = rng.uniform(0.0, 1.0)
  return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# Splits and proxies.
# ----------------------------------------------------------------------------
def stratified_split(labels: np.ndarray, seed: int) -> np.ndarray:
  """Seeded per-class 70/10/20 split; returns uint8 codes 0/1/2."""
  rng = np.random.default_rng([seed, 7])
  split = np.zeros(len(labels), np.uint8)
  for c in np.unique(labels):
    idx = rng.permutation(np.nonzero(labels == c)[0])
    n_val = int(round(SPLIT_FRACTIONS[1] * len(idx)))
    n_test = int(round(SPLIT_FRACTIONS[2] * len(idx)))
    split[idx[:n_test]] = 2
    split[idx[n_test : n_test + n_val]] = 1
  return split


def proxy_accuracies(image, label, audio, offsets, text, vocab, split):
  """Test accuracy of logistic regression per modality and fused."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  n = len(label)
  f_img = image.reshape(n, -1).astype(np.float32) / 255.0
  f_aud = np.stack(
    [
      np.concatenate([a.mean(0), a.std(0)])
      for a in (audio[offsets[i] : offsets[i + 1]].astype(np.float32) for i in range(n))
    ]
  )
  index = {w: i for i, w in enumerate(vocab)}
  f_txt = np.zeros((n, len(vocab)), np.float32)
  for i, t in enumerate(text):
    for w in t.split():
      f_txt[i, index[w]] = 1.0
  feats = {
    "image": f_img,
    "audio": f_aud,
    "text": f_txt,
    "fused": np.concatenate([f_img, f_aud, f_txt], axis=1),
  }
  tr, te = split == 0, split == 2
  out = {}
  for name, f in feats.items():
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
    clf.fit(f[tr], label[tr])
    out[name] = float((clf.predict(f[te]) == label[te]).mean())
  return out


# ----------------------------------------------------------------------------
# Main.
# ----------------------------------------------------------------------------
def main(argv=None):
  """Builds the dataset assets and prints proxy accuracies."""
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--out_dir", type=pathlib.Path, default=ASSETS)
  args = parser.parse_args(argv)
  t0 = time.time()

  from sklearn.datasets import load_digits

  digits = load_digits()
  label = digits.target.astype(np.int64)
  n = len(label)
  rng = np.random.default_rng(args.seed)

  # Per-example synthesis parameters, all drawn up front.
  voices = [VOICES[rng.integers(len(VOICES))] + VARIANTS[rng.integers(len(VARIANTS))] for _ in range(n)]
  speeds = rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1, size=n)
  pitches = rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1, size=n)
  snrs = rng.uniform(*SNR_DB_RANGE, size=n)
  voice_meta = np.array(
    [f"{v} s{s} p{p} snr{x:+.1f}dB" for v, s, p, x in zip(voices, speeds, pitches, snrs, strict=True)]
  )

  split = stratified_split(label, args.seed)
  image = np.stack(
    [corrupt_image(digits.images[i] / 16.0, np.random.default_rng([args.seed, 1, i])) for i in range(n)]
  )
  text = np.array(
    [
      phrases.sample_phrase(int(label[i]), np.random.default_rng([args.seed, 2, i]), UNINFORMATIVE_PROB)
      for i in range(n)
    ]
  )

  mels = [None] * n
  with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
    futures = [
      pool.submit(synthesize, phrases.DIGIT_WORDS[label[i]], voices[i], int(speeds[i]), int(pitches[i]))
      for i in range(n)
    ]
    for i, fut in enumerate(futures):
      mels[i] = noisy_log_mel(fut.result(), snrs[i], np.random.default_rng([args.seed, 3, i]))
      if (i + 1) % 200 == 0 or i + 1 == n:
        print(f"synthesized {i + 1}/{n} utterances ({time.time() - t0:.1f}s)", flush=True)

  lengths = np.array([len(m) for m in mels])
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  audio = np.concatenate(mels, axis=0)
  train_frames = np.concatenate([m for m, s in zip(mels, split, strict=True) if s == 0])
  mean, std = train_frames.mean(0), train_frames.std(0)
  audio = ((audio - mean) / std).astype(np.float16)

  vocab = ["<pad>", "<unk>"] + sorted({w for t in text for w in t.split()})
  args.out_dir.mkdir(parents=True, exist_ok=True)
  npz_path = args.out_dir / "digits_av.npz"
  np.savez_compressed(
    npz_path,
    image=image,
    label=label,
    audio=audio,
    audio_offsets=offsets,
    text=text,
    split=split,
    voice=voice_meta,
  )
  (args.out_dir / "digits_av_vocab.txt").write_text("\n".join(vocab) + "\n")

  acc = proxy_accuracies(image, label, audio, offsets, text, vocab[2:], split)
  print(f"wrote {npz_path} ({npz_path.stat().st_size / 2**20:.2f} MiB)")
  print(f"split sizes: train={np.sum(split == 0)} validation={np.sum(split == 1)} test={np.sum(split == 2)}")
  print(f"frames per utterance: min={lengths.min()} mean={lengths.mean():.1f} max={lengths.max()}")
  print(f"vocab size: {len(vocab)} (incl. <pad>, <unk>)")
  print("proxy test accuracy (logistic regression): " + ", ".join(f"{k}={v:.3f}" for k, v in acc.items()))
  print(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
  main()
