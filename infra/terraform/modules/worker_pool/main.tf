# One Hodei worker pool on EC2: the launch template its workers start from, their role
# (which may only read the pool's own registration-token parameter), their security
# group and, for kind = "asg", the Auto Scaling group whose size Hodei owns.

data "aws_partition" "current" {}

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

data "aws_ssm_parameter" "al2023" {
  count = var.image_id == null ? 1 : 0

  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

locals {
  full_name = "${var.name}-${var.pool}"
  region    = data.aws_region.current.name
  image_id  = var.image_id != null ? var.image_id : nonsensitive(data.aws_ssm_parameter.al2023[0].value)

  token_parameter_name = "/hodei/${var.name}/pools/${var.pool}/registration-token"
  token_parameter_arn  = "arn:${data.aws_partition.current.partition}:ssm:${local.region}:${data.aws_caller_identity.current.account_id}:parameter${local.token_parameter_name}"

  # The tags the control plane's permissions require (modules/iam), on every resource.
  tags = merge(var.tags, {
    "hodei:deployment" = var.name
    "hodei:pool"       = var.pool
  })
}

# The registration token, in a parameter of the pool's own: the workers' role reads this
# one and nothing else.
resource "aws_ssm_parameter" "registration_token" {
  name        = local.token_parameter_name
  description = "Worker registration token of Hodei pool ${var.pool} (${var.name})"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = var.registration_token
  tags        = local.tags
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "worker" {
  name               = "${local.full_name}-worker"
  description        = "Hodei workers of pool ${var.pool} (${var.name}): read their registration token, nothing else"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "ReadOwnToken"
    actions   = ["ssm:GetParameter"]
    resources = [local.token_parameter_arn]
  }

  statement {
    sid       = "DecryptOwnToken"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["ssm.${local.region}.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "kms:EncryptionContext:PARAMETER_ARN"
      values   = [local.token_parameter_arn]
    }
  }
}

resource "aws_iam_role_policy" "worker" {
  name   = "hodei-worker"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker.json
}

resource "aws_iam_instance_profile" "worker" {
  name = "${local.full_name}-worker"
  role = aws_iam_role.worker.name
  tags = local.tags
}

# Workers open connections and accept none: HTTPS out to the API (through the load
# balancer), to SSM and to package mirrors. Jobs that need more get it from
# additional_security_group_ids.
resource "aws_security_group" "worker" {
  name        = "${local.full_name}-worker"
  description = "Hodei workers of pool ${var.pool}: HTTPS out only"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.worker.id
  description       = "HTTPS to the Hodei API, SSM and package mirrors"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  tags              = local.tags
}

resource "aws_launch_template" "worker" {
  name                   = local.full_name
  description            = "Hodei workers of pool ${var.pool} (${var.name})"
  image_id               = local.image_id
  instance_type          = var.instance_types[0]
  update_default_version = true
  ebs_optimized          = true
  vpc_security_group_ids = concat([aws_security_group.worker.id], var.additional_security_group_ids)

  user_data = base64encode(templatefile("${path.module}/user_data.sh.tftpl", {
    api_url         = var.api_url
    pool            = var.pool
    region          = local.region
    token_parameter = aws_ssm_parameter.registration_token.name
    worker_args     = var.worker_args
  }))

  iam_instance_profile {
    arn = aws_iam_instance_profile.worker.arn
  }

  # IMDSv2 only, one hop: a job in a container cannot reach the instance's credentials
  # through the metadata service.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = var.root_volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.ebs_kms_key_arn
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = local.full_name })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = local.tags
  }

  # The control plane may launch from this template because it carries the deployment tag.
  tags = local.tags
}

# kind = "asg": the group exists, Hodei decides its size and which instance leaves.
resource "aws_autoscaling_group" "worker" {
  count = var.kind == "asg" ? 1 : 0

  name                = local.full_name
  min_size            = var.min_size
  max_size            = var.max_size
  desired_capacity    = var.min_size
  vpc_zone_identifier = var.subnet_ids
  health_check_type   = "EC2"

  # Hodei owns the size: the group has no scaling policies of its own (none are declared
  # here, and none may be added), so nothing but Hodei changes desired_capacity.

  # AZRebalance would terminate instances, busy or not, to even out the zones. Hodei
  # picks which instance leaves (an idle one, drained first).
  suspended_processes = ["AZRebalance"]

  # Every instance is protected from scale-in: lowering the desired capacity never
  # terminates a worker; Hodei drains one and terminates it itself
  # (TerminateInstanceInAutoScalingGroup).
  protect_from_scale_in = true

  # Capacity Rebalancing would replace a spot instance at risk before its interruption,
  # terminating the old one whatever it runs. Hodei drains on the interruption instead.
  capacity_rebalance = false

  # Terraform does not wait for instances: with min_size 0 there may be none for a while.
  wait_for_capacity_timeout = "0"

  mixed_instances_policy {
    instances_distribution {
      on_demand_base_capacity                  = 0
      on_demand_percentage_above_base_capacity = var.capacity_type == "spot" ? 0 : 100
      spot_allocation_strategy                 = "price-capacity-optimized"
    }

    launch_template {
      launch_template_specification {
        launch_template_id = aws_launch_template.worker.id
        version            = "$Latest"
      }

      dynamic "override" {
        for_each = var.instance_types

        content {
          instance_type = override.value
        }
      }
    }
  }

  tag {
    key                 = "hodei:deployment"
    value               = var.name
    propagate_at_launch = true
  }

  tag {
    key                 = "hodei:pool"
    value               = var.pool
    propagate_at_launch = true
  }

  tag {
    key                 = "Name"
    value               = local.full_name
    propagate_at_launch = true
  }

  dynamic "tag" {
    for_each = var.tags

    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    # Hodei sets the desired capacity; a plan must not put it back to min_size.
    ignore_changes = [desired_capacity]
  }
}
