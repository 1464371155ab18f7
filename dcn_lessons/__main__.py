import sys

from dcn_lessons.course import main

sys.exit(main())
