"""``export/train``: distil an ALiBi-Dv2 student from a DINOv2 teacher (method.md section 3).

>>> from dinosaw_deploy.export.train import train
>>> train("dinov2_vits14_reg4_timm.pth", "my_micrographs/", "student.pth", echo=print)

The result loads with :func:`dinosaw_deploy.export.checkpoint.load_checkpoint` and exports with
``dinosaw-deploy export --checkpoint student.pth``.
"""
from .loop import TrainResult, train
from .recipe import Recipe, Stage, load_recipe
from .teacher import load_teacher, student_from_teacher

__all__ = [
    "Recipe", "Stage", "TrainResult", "load_recipe", "load_teacher", "student_from_teacher", "train",
]
