"""The admin face: ModelAdmins, their forms and the job-run dashboard.

Actions and views call the parts' service functions and hold no logic. Importing this
package registers the ModelAdmins (Django's admin autodiscovery imports it).
"""

from djcelery_ops.admin import bulk as _bulk  # noqa: F401
from djcelery_ops.admin import deadletter as _deadletter  # noqa: F401
from djcelery_ops.admin import idempotency as _idempotency  # noqa: F401
from djcelery_ops.admin import runs as _runs  # noqa: F401
from djcelery_ops.admin import schedules as _schedules  # noqa: F401
