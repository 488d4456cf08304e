"""TFDS builders of mmjax; importing this package registers them with tfds."""

from mmjax.data.builders.digits_av import DigitsAv
from mmjax.data.builders.digits_av_captions import DigitsAvCaptions
from mmjax.data.builders.digits_av_qa import DigitsAvQa
from mmjax.data.builders.digits_av_text import DigitsAvText
from mmjax.data.builders.image_captions import ImageCaptions
from mmjax.data.builders.multimodal_sentiment import CmuMosei, CmuMosi, Iemocap

__all__ = ["CmuMosei", "CmuMosi", "DigitsAv", "DigitsAvCaptions", "DigitsAvQa", "DigitsAvText", "Iemocap",
           "ImageCaptions"]
